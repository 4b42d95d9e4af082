"""Reading heapgate's markers into the checks a test runs under.

A bad marker raises :class:`MarkerError`; the plugin turns it into an error of that one test
(never an INTERNALERROR that ends the session, as pytest-memray 1.11 does on ``"abc"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .limits import LimitError, parse_size

if TYPE_CHECKING:
    import pytest
    from _pytest.nodes import Node

__all__ = ["MARKERS", "Checks", "LimitMemory", "MarkerError", "checks_for"]

MARKERS = {
    "limit_memory": (
        "limit_memory(limit, *, current_thread_only=False): fail the test when the peak of memory "
        "it allocates exceeds limit (e.g. '50MB', '1.5GiB', or bytes)."
    ),
}


class MarkerError(Exception):
    """A marker whose arguments cannot be used; the message says which and why."""


@dataclass(frozen=True)
class LimitMemory:
    """``limit_memory``: the peak allowed, in bytes."""

    limit: int
    current_thread_only: bool = False


@dataclass(frozen=True)
class Checks:
    """Everything heapgate checks for one test."""

    limit_memory: Optional[LimitMemory] = None

    @property
    def thread_mode(self) -> str:
        """Whose allocations are charged to the test (see the core's ThreadMode)."""
        lm = self.limit_memory
        return "current_thread" if lm is not None and lm.current_thread_only else "spawned"

    def __bool__(self) -> bool:
        return self.limit_memory is not None


def _limit_memory(limit: object, *, current_thread_only: bool = False) -> LimitMemory:
    if not isinstance(current_thread_only, bool):
        raise MarkerError(f"current_thread_only must be True or False, not {current_thread_only!r}")
    return LimitMemory(parse_size(limit), current_thread_only)


def _closest(item: pytest.Item, name: str) -> Optional[Any]:
    """The marker nearest the test; two of the same kind on one node is an error."""
    closest_node: Optional[Node] = None
    found = []
    for node, mark in item.iter_markers_with_node(name):
        if closest_node is None:
            closest_node = node
        if node is closest_node:
            found.append(mark)
    if len(found) > 1:
        where = closest_node.nodeid if closest_node is not None else item.nodeid
        raise MarkerError(
            f"{len(found)} @pytest.mark.{name} markers on {where!r}; "
            "give the test one limit"
        )
    return found[0] if found else None


def checks_for(item: pytest.Item) -> Checks:
    """The checks ``item`` runs under; raises MarkerError on a bad marker."""
    mark = _closest(item, "limit_memory")
    if mark is None:
        return Checks()
    try:
        return Checks(limit_memory=_limit_memory(*mark.args, **mark.kwargs))
    except LimitError as e:
        raise MarkerError(f"@pytest.mark.limit_memory: {e}") from None
    except TypeError as e:
        raise MarkerError(
            f"@pytest.mark.limit_memory{_call_text(mark)}: {e}; "
            "expected limit_memory(limit, *, current_thread_only=False)"
        ) from None


def _call_text(mark: Any) -> str:
    parts = [repr(a) for a in mark.args] + [f"{k}={v!r}" for k, v in mark.kwargs.items()]
    return f"({', '.join(parts)})"
