"""The text a person reads: failure messages and the terminal summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .limits import format_size

if TYPE_CHECKING:
    from ._native import Report, Site, StackFrame

__all__ = ["format_frame", "peak_failure", "thread_rule_text"]

_THREAD_RULES = {
    "current_thread": "allocations of the test's own thread while the test function ran (current_thread_only=True)",
    "spawned": (
        "allocations of the test's thread while the test function ran, "
        "and of threads it started (default)"
    ),
    "all": "allocations of every thread during the test call (all_threads=True)",
}


def thread_rule_text(mode: str) -> str:
    """One line saying whose allocations were charged."""
    return _THREAD_RULES[mode]


def _show_path(filename: str, rootpath: Optional[Path]) -> str:
    if rootpath is not None and os.path.isabs(filename):
        try:
            return str(Path(filename).relative_to(rootpath))
        except ValueError:
            pass
    return filename


def format_frame(frame: StackFrame, rootpath: Optional[Path] = None) -> str:
    """``function at path:line``; ``function in object`` for native code without line info."""
    if frame.filename and frame.lineno:
        return f"{frame.function} at {_show_path(frame.filename, rootpath)}:{frame.lineno}"
    if frame.module:
        return f"{frame.function} in {frame.module}"
    if frame.address is not None and frame.function == "??":
        return f"?? at {frame.address:#x}"
    return frame.function


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _site_lines(index: int, site: Site, bytes_: int, count: int, rootpath: Optional[Path], max_frames: Optional[int]) -> list[str]:
    lines = [
        f"  #{index} {format_size(bytes_)} ({bytes_} bytes) in "
        f"{_plural(count, 'allocation')} through {site.allocator}"
    ]
    stack: Sequence[StackFrame] = site.stack
    if not stack:
        lines.append("      (no Python frames: a native thread started by the test; --native shows its stack)")
    shown = stack if max_frames is None else stack[:max_frames]
    for frame in shown:
        lines.append(f"      {format_frame(frame, rootpath)}")
    if len(shown) < len(stack):
        lines.append(f"      ... {len(stack) - len(shown)} more frames (--stacks)")
    return lines


def peak_failure(
    limit: int,
    report: Report,
    mode: str,
    rootpath: Optional[Path] = None,
    max_sites: int = 5,
    max_frames: Optional[int] = None,
) -> str:
    """The failure message of a test whose peak exceeded ``limit``."""
    lines = [
        f"Test was limited to {format_size(limit)} but allocated "
        f"{format_size(report.peak_bytes)} at its peak",
        f"  limit {limit} bytes, peak {report.peak_bytes} bytes in "
        f"{_plural(report.peak_count, 'live allocation')}",
        f"  charged: {thread_rule_text(mode)}",
        "Top locations at the peak (allocating frame first):",
    ]
    sites = [s for s in report.sites if s.bytes_at_peak > 0][:max_sites]
    for i, site in enumerate(sites, 1):
        lines.extend(_site_lines(i, site, site.bytes_at_peak, site.count_at_peak, rootpath, max_frames))
    return "\n".join(lines)
