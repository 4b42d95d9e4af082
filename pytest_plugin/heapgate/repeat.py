"""Warm-up runs and repeat-run leak growth (the job pytest-leaks' ``-R`` does on debug builds,
on a normal CPython): run a test's call several times and watch what stays allocated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .formatting import format_frame
from .limits import format_size

if TYPE_CHECKING:
    from ._native import Report, Site

__all__ = ["GROWTH_GRANULARITY", "Growth", "growth_failure", "live_by_location", "warm_up"]

# The smallest step CPython's and the C library's allocators take: growth below it is the
# allocator's rounding, not a leak.
GROWTH_GRANULARITY = 16


def warm_up(runtest: Callable[[], Any], runs: int) -> None:
    """Run the test's call ``runs`` times untracked, so caches built on first use, first
    imports and interned strings do not depend on which tests ran before."""
    for _ in range(runs):
        runtest()


def _location_key(site: Site) -> tuple[Any, ...]:
    return (site.allocator, tuple((f.function, f.filename, f.lineno, f.address) for f in site.stack))


def live_by_location(report: Report) -> dict[tuple[Any, ...], tuple[int, Site]]:
    """Bytes live now per location (allocator and stack) in a checkpoint report."""
    live: dict[tuple[Any, ...], tuple[int, Site]] = {}
    for site in report.sites:
        if site.leaked_bytes:
            key = _location_key(site)
            previous = live.get(key, (0, site))[0]
            live[key] = (previous + site.leaked_bytes, site)
    return live


@dataclass
class Growth:
    """A location whose live memory grew on every one of the last runs."""

    site: Site
    per_run: list[int] = field(default_factory=list)


def _rounded(delta: int) -> int:
    return delta - delta % GROWTH_GRANULARITY if delta > 0 else delta


def growth_failure(
    totals: Sequence[int],
    checkpoints: Sequence[Report],
    threshold: int,
    rootpath: Optional[Path] = None,
    max_frames: Optional[int] = None,
    max_locations: int = 5,
) -> Optional[str]:
    """Fail when the live memory grew by more than ``threshold`` bytes (after rounding to
    the allocator's granularity) on each run after the first, naming the locations that grew
    on every one of those runs. ``totals``/``checkpoints``: after each run, in order."""
    if len(totals) < 2:
        return None
    deltas = [_rounded(b - a) for a, b in zip(totals, totals[1:])]
    if not all(d > threshold for d in deltas):
        return None
    lives = [live_by_location(c) for c in checkpoints]
    growing: list[Growth] = []
    for key, (_, site) in lives[-1].items():
        series = [live.get(key, (0, site))[0] for live in lives]
        per_run = [_rounded(b - a) for a, b in zip(series, series[1:])]
        if per_run and all(d > 0 for d in per_run):
            growing.append(Growth(site, per_run))
    growing.sort(key=lambda g: sum(g.per_run), reverse=True)
    runs = len(totals)
    lines = [
        f"Live memory grew on each of the last {len(deltas)} of {runs} runs of the test "
        f"(threshold {format_size(threshold)} per run, --heapgate-repeat)",
        f"  growth per run: {', '.join(f'+{d} bytes' for d in deltas)}",
        "Growing locations (allocating frame first):",
    ]
    for i, g in enumerate(growing[:max_locations], 1):
        steps = ", ".join(f"+{d}" for d in g.per_run)
        lines.append(f"  #{i} +{format_size(sum(g.per_run) // len(g.per_run))} per run ({steps} bytes) through {g.site.allocator}")
        stack = g.site.stack if max_frames is None else g.site.stack[:max_frames]
        lines.extend(f"      {format_frame(f, rootpath)}" for f in stack)
    if not growing:
        lines.append("  (no single location grew on every run: the growth moves between locations)")
    return "\n".join(lines)

