"""Leak checks on a finished test's report: ``limit_leaks`` (per location, any origin) and
``--native-leaks`` (memory lost by native code, by reachability, with suppressions)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .formatting import format_frame
from .limits import format_size

if TYPE_CHECKING:
    from ._native import LeakKinds, LeakTally, Report, Site, StackFrame

__all__ = [
    "LeakStack",
    "Suppression",
    "SuppressionError",
    "is_native_site",
    "limit_leaks_failure",
    "load_suppressions",
    "native_leaks_result",
]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _stack_lines(stack: Sequence[StackFrame], rootpath: Optional[Path], max_frames: Optional[int]) -> list[str]:
    if not stack:
        return ["      (no frames)"]
    shown = stack if max_frames is None else stack[:max_frames]
    lines = [f"      {format_frame(f, rootpath)}" for f in shown]
    if len(shown) < len(stack):
        lines.append(f"      ... {len(stack) - len(shown)} more frames (--stacks)")
    return lines


@dataclass(frozen=True)
class LeakStack:
    """What ``limit_leaks``' ``filter_fn`` receives: the location's frames, allocating frame
    first, each with ``function``, ``filename`` and ``lineno`` (as in pytest-memray)."""

    frames: tuple[StackFrame, ...]


@dataclass
class _Location:
    stack: tuple[StackFrame, ...]
    bytes: int = 0
    count: int = 0
    allocators: set[str] = field(default_factory=set)


def _frame_key(frame: StackFrame) -> tuple[Any, ...]:
    return (frame.function, frame.filename, frame.lineno, frame.kind)


def leaked_locations(report: Report) -> list[_Location]:
    """Memory still allocated at the end, grouped by location (the stack as shown), largest first."""
    by_stack: dict[tuple[Any, ...], _Location] = {}
    for site in report.sites:
        if site.leaked_bytes == 0 and site.leaked_count == 0:
            continue
        stack = tuple(site.stack)
        loc = by_stack.setdefault(tuple(_frame_key(f) for f in stack), _Location(stack))
        loc.bytes += site.leaked_bytes
        loc.count += site.leaked_count
        loc.allocators.add(str(site.allocator))
    return sorted(by_stack.values(), key=lambda l: l.bytes, reverse=True)


def limit_leaks_failure(
    limit: int,
    report: Report,
    filter_fn: Optional[Callable[[Any], object]],
    rootpath: Optional[Path] = None,
    max_frames: Optional[int] = None,
    max_locations: int = 5,
) -> Optional[str]:
    """The failure text when some location leaked more than ``limit`` bytes, else None."""
    offending = [
        loc
        for loc in leaked_locations(report)
        if loc.bytes > limit and (filter_fn is None or filter_fn(LeakStack(loc.stack)))
    ]
    if not offending:
        return None
    lines = [
        f"Test was limited to {format_size(limit)} of leaked memory per location, but "
        f"{_plural(len(offending), 'location')} leaked more",
        f"  limit {limit} bytes per location; {report.leaked_bytes} bytes in "
        f"{_plural(report.leaked_count, 'allocation')} still allocated after the test (after gc.collect())",
        "Leaking locations (allocating frame first):",
    ]
    for i, loc in enumerate(offending[:max_locations], 1):
        lines.append(
            f"  #{i} {format_size(loc.bytes)} ({loc.bytes} bytes) in {_plural(loc.count, 'allocation')} "
            f"through {', '.join(sorted(loc.allocators))}"
        )
        lines.extend(_stack_lines(loc.stack, rootpath, max_frames))
    if len(offending) > max_locations:
        lines.append(f"  ... {len(offending) - max_locations} more locations over the limit")
    return "\n".join(lines)


class SuppressionError(ValueError):
    """A suppressions file that cannot be read; the message names the file and line."""


@dataclass
class Suppression:
    """One ``leak:PATTERN`` line, and what it absorbed in this session."""

    pattern: str
    source: str
    regex: re.Pattern[str]
    bytes: int = 0
    blocks: int = 0

    def matches(self, frame: StackFrame) -> bool:
        names = (frame.function, frame.filename or "", frame.module or "")
        return any(name and self.regex.search(name) for name in names)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """LeakSanitizer's pattern language: substring match, ``*`` any run, ``^``/``$`` anchors."""
    start = pattern.startswith("^")
    end = pattern.endswith("$") and len(pattern) > int(start)
    body = pattern[int(start) : len(pattern) - int(end)]
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(("^" if start else "") + regex + ("$" if end else ""))


def load_suppressions(path: Path) -> list[Suppression]:
    """Read a LeakSanitizer-style suppressions file: ``leak:PATTERN`` lines, ``#`` comments."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SuppressionError(f"heapgate: cannot read suppressions file {path}: {e}") from None
    suppressions = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, pattern = line.partition(":")
        if not sep or kind.strip() != "leak" or not pattern.strip():
            raise SuppressionError(
                f"heapgate: {path}:{number}: expected 'leak:PATTERN' (or a # comment), found {raw!r}"
            )
        pattern = pattern.strip()
        suppressions.append(Suppression(pattern, f"{path.name}:{number}", _pattern_regex(pattern)))
    return suppressions


def is_native_site(stack: Sequence[StackFrame]) -> bool:
    """Was this memory allocated by native code? True when the nearest frame that is not the
    interpreter's own (nor the allocator's, already dropped) is an extension or library frame:
    this includes Python objects that extension code creates through the C API."""
    from ._native import FrameKind

    for frame in stack:
        if frame.kind == FrameKind.INTERPRETER:
            continue
        return frame.kind == FrameKind.NATIVE
    return False


# What fails a test: definitely and indirectly lost, and (as valgrind's default error kinds
# include it) possibly lost — memory only interior pointers point into (`LeakKinds.lost`).
LOST_KINDS = ("definitely_lost", "indirectly_lost", "possibly_lost")


@dataclass
class NativeLeakResult:
    """The native leak check of one test."""

    failure: Optional[str]
    reachable_bytes: int
    reachable_blocks: int
    # Still-reachable native memory by location (what -v shows): lines of text.
    reachable_locations: list[str] = field(default_factory=list)


def _by_kind(kinds: LeakKinds) -> dict[str, LeakTally]:
    """The kinds by name (as the failure text names them, with spaces for underscores)."""
    return {
        "definitely_lost": kinds.definitely_lost,
        "indirectly_lost": kinds.indirectly_lost,
        "possibly_lost": kinds.possibly_lost,
        "still_reachable": kinds.still_reachable,
    }


def native_leaks_result(
    limit: int,
    report: Report,
    suppressions: Sequence[Suppression],
    rootpath: Optional[Path] = None,
    max_frames: Optional[int] = None,
    max_locations: int = 5,
) -> NativeLeakResult:
    """Definitely and indirectly lost bytes from native code, minus suppressed stacks, against
    ``limit``. Still-reachable memory never fails a test."""
    lost: list[tuple[int, Site]] = []
    reachable_sites: list[tuple[int, Site]] = []
    totals = {kind: [0, 0] for kind in ("definitely_lost", "indirectly_lost", "possibly_lost", "still_reachable")}
    absorbed: dict[str, list[int]] = {}
    native = [site for site in report.sites if is_native_site(site.stack)]
    if any(site.leak_kinds and site.leak_kinds.indirectly_lost.count for site in native):
        # Indirectly lost blocks hang off a definitely or possibly lost one, which may have been
        # allocated by the interpreter (a Python object whose reference C code leaked): those
        # lost blocks are shown too, or the report would show the rest of a leak without its head.
        native += [
            site
            for site in report.sites
            if not is_native_site(site.stack)
            and site.leak_kinds
            and (site.leak_kinds.definitely_lost.count or site.leak_kinds.possibly_lost.count)
        ]
    for site in native:
        kinds = site.leak_kinds
        if kinds is None or not site.leaked_count:
            continue
        site_lost, site_lost_blocks = kinds.lost.bytes, kinds.lost.count
        suppression = next((s for s in suppressions if any(s.matches(f) for f in site.stack)), None)
        if suppression is not None:
            suppression.bytes += site_lost
            suppression.blocks += site_lost_blocks
            tally = absorbed.setdefault(f"leak:{suppression.pattern} ({suppression.source})", [0, 0])
            tally[0] += site_lost
            tally[1] += site_lost_blocks
            continue
        for kind, of_kind in _by_kind(kinds).items():
            if kind == "still_reachable" and not is_native_site(site.stack):
                continue
            totals[kind][0] += of_kind.bytes
            totals[kind][1] += of_kind.count
        if site_lost:
            lost.append((site_lost, site))
        if kinds.still_reachable.count:
            reachable_sites.append((kinds.still_reachable.bytes, site))
    lost_bytes = sum(totals[k][0] for k in LOST_KINDS)
    reachable = totals["still_reachable"]
    locations = _reachable_lines(reachable_sites, rootpath, max_frames)
    if lost_bytes <= limit:
        return NativeLeakResult(None, reachable[0], reachable[1], locations)
    lines = [
        f"Test leaked {format_size(lost_bytes)} from native code (limit {format_size(limit)}, --native-leaks)",
        f"  definitely lost: {totals['definitely_lost'][0]} bytes in {_plural(totals['definitely_lost'][1], 'block')}; "
        f"indirectly lost: {totals['indirectly_lost'][0]} bytes in {_plural(totals['indirectly_lost'][1], 'block')}; "
        f"possibly lost (only interior pointers found): {totals['possibly_lost'][0]} bytes in "
        f"{_plural(totals['possibly_lost'][1], 'block')}",
        f"  still reachable (not counted): {reachable[0]} bytes in {_plural(reachable[1], 'block')}",
    ]
    for name, (b, n) in absorbed.items():
        lines.append(f"  suppressed by {name}: {b} bytes in {_plural(n, 'block')}")
    lines.append("Lost memory by location (allocating frame first):")
    lost.sort(key=lambda t: t[0], reverse=True)
    for i, (site_lost, site) in enumerate(lost[:max_locations], 1):
        by_kind = _by_kind(site.leak_kinds) if site.leak_kinds else {}
        parts = [
            f"{by_kind[k].bytes} bytes {k.replace('_', ' ')} in {_plural(by_kind[k].count, 'block')}"
            for k in LOST_KINDS
            if by_kind[k].count
        ]
        lines.append(f"  #{i} {format_size(site_lost)}: {'; '.join(parts)} through {site.allocator}")
        lines.extend(_stack_lines(site.stack, rootpath, max_frames))
    if len(lost) > max_locations:
        lines.append(f"  ... {len(lost) - max_locations} more locations")
    return NativeLeakResult("\n".join(lines), reachable[0], reachable[1], locations)


def _reachable_lines(
    sites: list[tuple[int, Site]], rootpath: Optional[Path], max_frames: Optional[int], max_locations: int = 20
) -> list[str]:
    """Still-reachable native memory by location, largest first (not counted as lost)."""
    if not sites:
        return []
    sites = sorted(sites, key=lambda t: t[0], reverse=True)
    total = sum(b for b, _ in sites)
    blocks = sum(s.leak_kinds.still_reachable.count for _, s in sites if s.leak_kinds)
    lines = [
        f"Still reachable native memory (not counted): {total} bytes in {_plural(blocks, 'block')}, "
        "by location (allocating frame first):"
    ]
    for i, (nbytes, site) in enumerate(sites[:max_locations], 1):
        count = site.leak_kinds.still_reachable.count if site.leak_kinds else 0
        lines.append(f"  #{i} {format_size(nbytes)}: {nbytes} bytes in {_plural(count, 'block')} through {site.allocator}")
        lines.extend(_stack_lines(site.stack, rootpath, max_frames))
    if len(sites) > max_locations:
        lines.append(f"  ... {len(sites) - max_locations} more locations")
    return lines
