"""The text a person reads: failure messages and the terminal summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .limits import format_size

if TYPE_CHECKING:
    from ._native import Report, StackFrame

__all__ = ["format_frame", "peak_failure", "summary_lines"]

def format_frame(frame: StackFrame, rootpath: Optional[Path] = None) -> str:
    """``function at path:line``; ``function in object`` for native code without line info
    (the Rust core's format, the same as in every other report)."""
    return frame.format(str(rootpath) if rootpath is not None else None)


def peak_failure(
    limit: int,
    report: Report,
    mode: str,
    rootpath: Optional[Path] = None,
    max_sites: int = 5,
    max_frames: Optional[int] = None,
) -> str:
    """The failure message of a test whose peak exceeded ``limit`` (made by the Rust core's
    report/text.rs, the same text ``heapgate report`` prints for a capture file)."""
    return report.peak_failure(limit, mode, str(rootpath) if rootpath is not None else None, max_sites, max_frames)


# (peak bytes, allocations, leaked bytes, limit or None, node id, failed a memory check)
SummaryRow = tuple[int, int, int, Optional[int], str, bool]


def summary_lines(rows: Sequence[SummaryRow], most: Optional[int]) -> list[str]:
    """The compact table of tracked tests, highest peak first; ``most`` rows (0/None: all)."""
    ranked = sorted(rows, key=lambda r: r[0], reverse=True)
    shown = ranked if not most else ranked[:most]
    lines = [f"{'peak':>10} {'allocations':>11} {'leaked':>10} {'limit':>10}  test"]
    for peak, count, leaked, limit, nodeid, failed in shown:
        limit_text = format_size(limit) if limit is not None else "-"
        mark = "  FAILED" if failed else ""
        lines.append(f"{format_size(peak):>10} {count:>11} {format_size(leaked):>10} {limit_text:>10}  {nodeid}{mark}")
    if len(shown) < len(ranked):
        lines.append(f"({len(ranked) - len(shown)} more tracked tests; --most-allocations=0 shows all)")
    return lines
