"""Reading heapgate's markers into the checks a test runs under.

A bad marker raises :class:`MarkerError`; the plugin turns it into an error of that one test
(never an INTERNALERROR that ends the session, as pytest-memray 1.11 does on ``"abc"``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from .limits import LimitError, parse_size

if TYPE_CHECKING:
    import pytest
    from _pytest.nodes import Node

    from ._native import ThreadMode

__all__ = ["MARKERS", "Checks", "LimitLeaks", "LimitMemory", "MarkerError", "NativeLeaks", "checks_for"]

class MarkerError(Exception):
    """A marker whose arguments cannot be used; the message says which and why."""


@dataclass(frozen=True)
class RunOptions:
    """What a limit marker may say besides its limit: whose allocations count, and how many
    times the call runs (see issue 7 in the README's "Numbers to gate on")."""

    current_thread_only: bool = False
    all_threads: bool = False
    warmup: Optional[int] = None
    repeat: Optional[int] = None
    from_default: bool = False


@dataclass(frozen=True)
class LimitMemory(RunOptions):
    """``limit_memory``: the peak allowed, in bytes."""

    limit: int = 0


@dataclass(frozen=True)
class LimitLeaks(RunOptions):
    """``limit_leaks``: bytes one location may leave allocated; ``filter_fn(stack)`` returning
    False ignores a location (pytest-memray's signature)."""

    limit: int = 0
    filter_fn: Optional[Callable[[Any], object]] = None


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

    all_threads: bool = False

    def _limits(self) -> list[RunOptions]:
        return [c for c in (self.limit_memory, self.limit_leaks) if c is not None]

    @property
    def thread_mode(self) -> ThreadMode:
        """Whose allocations are charged to the test (the core's ThreadMode)."""
        from ._native import ThreadMode

        if self.all_threads or any(c.all_threads for c in self._limits()):
            return ThreadMode.ALL
        return ThreadMode.CURRENT_THREAD if any(c.current_thread_only for c in self._limits()) else ThreadMode.SPAWNED

    @property
    def warmup(self) -> Optional[int]:
        """Untracked runs of the call before the measured one, if a marker says."""
        given = [c.warmup for c in self._limits() if c.warmup is not None]
        return max(given) if given else None

    @property
    def repeat(self) -> Optional[int]:
        """Tracked runs of the call, if a marker says."""
        given = [c.repeat for c in self._limits() if c.repeat is not None]
        return max(given) if given else None

    @property
    def from_marker(self) -> bool:
        """Some limit comes from a marker (not a session default)."""
        return any(not c.from_default for c in self._limits())

    def __bool__(self) -> bool:
        return any(c is not None for c in (self.limit_memory, self.limit_leaks, self.native_leaks))


_OPT_OUT = object()


def _run_options(current_thread_only: object, all_threads: object, warmup: object, repeat: object) -> RunOptions:
    for name, flag in (("current_thread_only", current_thread_only), ("all_threads", all_threads)):
        if not isinstance(flag, bool):
            raise MarkerError(f"{name} must be True or False, not {flag!r}")
    if current_thread_only and all_threads:
        raise MarkerError("current_thread_only=True and all_threads=True contradict each other")
    for name, count, minimum in (("warmup", warmup, 0), ("repeat", repeat, 1)):
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < minimum):
            raise MarkerError(f"{name} must be a whole number of at least {minimum}, not {count!r}")
    return RunOptions(bool(current_thread_only), bool(all_threads), warmup, repeat)  # type: ignore[arg-type]


def _limit_memory(
    limit: object,
    *,
    current_thread_only: bool = False,
    all_threads: bool = False,
    warmup: Optional[int] = None,
    repeat: Optional[int] = None,
) -> Any:
    run = _run_options(current_thread_only, all_threads, warmup, repeat)
    if limit is None:
        return _OPT_OUT
    return LimitMemory(run.current_thread_only, run.all_threads, run.warmup, run.repeat, limit=parse_size(limit))


def _limit_leaks(
    location_limit: object,
    *,
    filter_fn: Optional[Callable[[Any], object]] = None,
    current_thread_only: bool = False,
    all_threads: bool = False,
    warmup: Optional[int] = None,
    repeat: Optional[int] = None,
) -> Any:
    if filter_fn is not None and not callable(filter_fn):
        raise MarkerError(f"filter_fn must be callable (it receives a stack), not {filter_fn!r}")
    run = _run_options(current_thread_only, all_threads, warmup, repeat)
    if location_limit is None:
        return _OPT_OUT
    return LimitLeaks(
        run.current_thread_only,
        run.all_threads,
        run.warmup,
        run.repeat,
        limit=parse_size(location_limit, "leak limit"),
        filter_fn=filter_fn,
    )


def _native_leaks(limit: object = 0) -> Optional[NativeLeaks]:
    if limit is False or limit is None:
        return None
    return NativeLeaks(parse_size(limit, "native leak limit"), from_marker=True)


def _signature(name: str, build: Callable[..., Any]) -> str:
    """``name(arg, *, keyword=default, ...)`` from the builder's own signature, so the help and
    the error messages cannot drift from what a marker accepts."""
    parts = []
    for param in inspect.signature(build).parameters.values():
        if param.kind is param.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        parts.append(param.name if param.default is param.empty else f"{param.name}={param.default!r}")
    return f"{name}({', '.join(parts)})"


_SIGNATURES = {
    "limit_memory": _signature("limit_memory", _limit_memory),
    "limit_leaks": _signature("limit_leaks", _limit_leaks),
    "native_leaks": _signature("native_leaks", _native_leaks) + " or native_leaks(False)",
}

# What each marker does; ``pytest --markers`` shows it after the signature.
_PURPOSES = {
    "limit_memory": (
        "fail the test when the peak of memory it allocates exceeds limit (e.g. '50MB', '1.5GiB', "
        "or bytes); limit=None opts out of --heapgate-limit-memory."
    ),
    "limit_leaks": (
        "fail the test when memory it allocated and did not free exceeds location_limit at any one "
        "allocation location; filter_fn(stack) returning False ignores a location."
    ),
    "native_leaks": (
        "check this test for memory lost by native code (as --native-leaks), with its own limit; "
        "native_leaks(False) opts the test out."
    ),
}
_RUN_OPTIONS = (
    " current_thread_only / all_threads: charge only the test's thread / every thread (default: the "
    "test's thread and those it starts); warmup: untracked runs of the call first; repeat: tracked "
    "runs, failing on growth in each."
)

MARKERS = {
    name: f"{signature}: {_PURPOSES[name]}{_RUN_OPTIONS if name != 'native_leaks' else ''}"
    for name, signature in _SIGNATURES.items()
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


def checks_for(
    item: pytest.Item,
    native_leaks_default: Optional[int] = None,
    limit_memory_default: Optional[int] = None,
    limit_leaks_default: Optional[int] = None,
    all_threads: bool = False,
) -> Checks:
    """The checks ``item`` runs under; raises MarkerError on a bad marker. Session defaults
    (--native-leaks, heapgate_limit_memory, heapgate_limit_leaks) apply to tests without a
    marker of that kind; a marker's ``None`` limit opts the test out of the default."""
    limit_memory = _from_marker(item, "limit_memory", _limit_memory)
    limit_leaks = _from_marker(item, "limit_leaks", _limit_leaks)
    native_leaks = _from_marker(item, "native_leaks", _native_leaks)
    if native_leaks is _ABSENT:
        native_leaks = None if native_leaks_default is None else NativeLeaks(native_leaks_default)
    if limit_memory is _ABSENT:
        limit_memory = None if limit_memory_default is None else LimitMemory(from_default=True, limit=limit_memory_default)
    if limit_leaks is _ABSENT:
        limit_leaks = None if limit_leaks_default is None else LimitLeaks(from_default=True, limit=limit_leaks_default)
    return Checks(
        limit_memory=None if limit_memory is _OPT_OUT else limit_memory,
        limit_leaks=None if limit_leaks is _OPT_OUT else limit_leaks,
        native_leaks=native_leaks,
        all_threads=all_threads,
    )


def _call_text(mark: Any) -> str:
    parts = [repr(a) for a in mark.args] + [f"{k}={v!r}" for k, v in mark.kwargs.items()]
    return f"({', '.join(parts)})"
