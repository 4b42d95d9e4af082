"""Reading heapgate's markers into the checks a test runs under.

A bad marker raises :class:`MarkerError`; the plugin turns it into an error of that one test
(never an INTERNALERROR that ends the session, as pytest-memray 1.11 does on ``"abc"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from .limits import LimitError, parse_size

if TYPE_CHECKING:
    import pytest
    from _pytest.nodes import Node

__all__ = ["MARKERS", "Checks", "LimitLeaks", "LimitMemory", "MarkerError", "NativeLeaks", "checks_for"]

MARKERS = {
    "limit_memory": (
        "limit_memory(limit, *, current_thread_only=False): fail the test when the peak of memory "
        "it allocates exceeds limit (e.g. '50MB', '1.5GiB', or bytes)."
    ),
    "limit_leaks": (
        "limit_leaks(location_limit, *, filter_fn=None, current_thread_only=False): fail the test when "
        "memory it allocated and did not free exceeds location_limit at any one allocation location."
    ),
    "native_leaks": (
        "native_leaks(limit=0): check this test for memory lost by native code (as --native-leaks), "
        "with its own limit; native_leaks(False) opts the test out."
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
class LimitLeaks:
    """``limit_leaks``: bytes one location may leave allocated; ``filter_fn(stack)`` returning
    False ignores a location (pytest-memray's signature)."""

    limit: int
    filter_fn: Optional[Callable[[Any], object]] = None
    current_thread_only: bool = False


@dataclass(frozen=True)
class NativeLeaks:
    """Native leak check: definitely and indirectly lost bytes from native code allowed."""

    limit: int
    from_marker: bool = False


@dataclass(frozen=True)
class Checks:
    """Everything heapgate checks for one test."""

    limit_memory: Optional[LimitMemory] = None
    limit_leaks: Optional[LimitLeaks] = None
    native_leaks: Optional[NativeLeaks] = None

    @property
    def thread_mode(self) -> str:
        """Whose allocations are charged to the test (see the core's ThreadMode)."""
        own = any(c is not None and c.current_thread_only for c in (self.limit_memory, self.limit_leaks))
        return "current_thread" if own else "spawned"

    @property
    def needs_collect(self) -> bool:
        """Leak checks look at memory still allocated after a garbage collection."""
        return self.limit_leaks is not None or self.native_leaks is not None

    def __bool__(self) -> bool:
        return any(c is not None for c in (self.limit_memory, self.limit_leaks, self.native_leaks))


def _limit_memory(limit: object, *, current_thread_only: bool = False) -> LimitMemory:
    if not isinstance(current_thread_only, bool):
        raise MarkerError(f"current_thread_only must be True or False, not {current_thread_only!r}")
    return LimitMemory(parse_size(limit), current_thread_only)


def _limit_leaks(
    location_limit: object, *, filter_fn: Optional[Callable[[Any], object]] = None, current_thread_only: bool = False
) -> LimitLeaks:
    if filter_fn is not None and not callable(filter_fn):
        raise MarkerError(f"filter_fn must be callable (it receives a stack), not {filter_fn!r}")
    if not isinstance(current_thread_only, bool):
        raise MarkerError(f"current_thread_only must be True or False, not {current_thread_only!r}")
    return LimitLeaks(parse_size(location_limit, "leak limit"), filter_fn, current_thread_only)


def _native_leaks(limit: object = 0) -> Optional[NativeLeaks]:
    if limit is False or limit is None:
        return None
    return NativeLeaks(parse_size(limit, "native leak limit"), from_marker=True)


_SIGNATURES = {
    "limit_memory": "limit_memory(limit, *, current_thread_only=False)",
    "limit_leaks": "limit_leaks(location_limit, *, filter_fn=None, current_thread_only=False)",
    "native_leaks": "native_leaks(limit=0) or native_leaks(False)",
}


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


def _from_marker(item: pytest.Item, name: str, build: Callable[..., Any]) -> Any:
    mark = _closest(item, name)
    if mark is None:
        return _ABSENT
    try:
        return build(*mark.args, **mark.kwargs)
    except LimitError as e:
        raise MarkerError(f"@pytest.mark.{name}: {e}") from None
    except MarkerError as e:
        raise MarkerError(f"@pytest.mark.{name}{_call_text(mark)}: {e}") from None
    except TypeError as e:
        raise MarkerError(f"@pytest.mark.{name}{_call_text(mark)}: {e}; expected {_SIGNATURES[name]}") from None


_ABSENT = object()


def checks_for(item: pytest.Item, native_leaks_default: Optional[int] = None) -> Checks:
    """The checks ``item`` runs under; raises MarkerError on a bad marker. With
    ``native_leaks_default`` (from --native-leaks), every test gets a native leak check
    unless its ``native_leaks`` marker says otherwise."""
    limit_memory = _from_marker(item, "limit_memory", _limit_memory)
    limit_leaks = _from_marker(item, "limit_leaks", _limit_leaks)
    native_leaks = _from_marker(item, "native_leaks", _native_leaks)
    if native_leaks is _ABSENT:
        native_leaks = None if native_leaks_default is None else NativeLeaks(native_leaks_default)
    return Checks(
        limit_memory=None if limit_memory is _ABSENT else limit_memory,
        limit_leaks=None if limit_leaks is _ABSENT else limit_leaks,
        native_leaks=native_leaks,
    )


def _call_text(mark: Any) -> str:
    parts = [repr(a) for a in mark.args] + [f"{k}={v!r}" for k, v in mark.kwargs.items()]
    return f"({', '.join(parts)})"
