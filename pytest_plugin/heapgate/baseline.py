"""Baselines: every test's peak and leaked bytes in a JSON file meant to be committed
(``--heapgate-save``), and the comparison of a run against it (``--heapgate-compare``).

File format (``"schema": "heapgate-baseline"``, ``"version": 1``)::

    {"schema": "heapgate-baseline", "version": 1, "heapgate_version": "0.1.0",
     "python_version": "3.11.7",
     "tests": {"test_x.py::test_a": {"peak_bytes": 1048576, "leaked_bytes": 0}, ...}}

Tests are sorted by node id and the file ends with a newline, so a change reviews as a small diff.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping, Optional

from .limits import format_size

__all__ = ["SCHEMA", "VERSION", "Baseline", "BaselineError", "Entry", "increase_failure", "save", "summary_lines"]

SCHEMA = "heapgate-baseline"
VERSION = 1


class BaselineError(Exception):
    """A baseline file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Entry:
    peak_bytes: int
    leaked_bytes: int


@dataclass
class Baseline:
    path: Path
    tests: dict[str, Entry]

    @classmethod
    def load(cls, path: Path) -> Baseline:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BaselineError(f"heapgate: baseline file {str(path)!r} does not exist (write one with --heapgate-save)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise BaselineError(f"heapgate: cannot read baseline file {str(path)!r}: {e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BaselineError(f"heapgate: baseline file {str(path)!r} is not JSON: {e}") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise BaselineError(
                f"heapgate: {str(path)!r} is not a heapgate baseline (expected \"schema\": \"{SCHEMA}\"; "
                "write one with --heapgate-save)"
            )
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BaselineError(f"heapgate: baseline file {str(path)!r} has no valid \"version\"")
        if version > VERSION:
            raise BaselineError(
                f"heapgate: baseline file {str(path)!r} has format version {version}; "
                f"this heapgate reads version {VERSION} (upgrade heapgate)"
            )
        raw = data.get("tests")
        if not isinstance(raw, dict):
            raise BaselineError(f"heapgate: baseline file {str(path)!r}: \"tests\" must be an object of node id -> entry")
        tests = {}
        for nodeid, entry in raw.items():
            peak = entry.get("peak_bytes") if isinstance(entry, dict) else None
            leaked = entry.get("leaked_bytes", 0) if isinstance(entry, dict) else None
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (peak, leaked)):
                raise BaselineError(
                    f"heapgate: baseline file {str(path)!r}: test {nodeid!r} needs non-negative integers "
                    "\"peak_bytes\" and \"leaked_bytes\""
                )
            assert isinstance(peak, int) and isinstance(leaked, int)
            tests[nodeid] = Entry(peak, leaked)
        return cls(path, tests)


def save(path: Path, tests: Mapping[str, Entry], heapgate_version: str) -> None:
    """Write a baseline (atomically: a temporary file renamed over ``path``)."""
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "version": VERSION,
        "heapgate_version": heapgate_version,
        "python_version": platform.python_version(),
        "tests": {
            nodeid: {"peak_bytes": e.peak_bytes, "leaked_bytes": e.leaked_bytes} for nodeid, e in sorted(tests.items())
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def tolerance_text(max_increase: Decimal, min_increase: int) -> str:
    return f"+{max_increase.normalize():f}% (increases under {format_size(min_increase)} never fail)"


def increase_failure(
    old: int, new: int, max_increase: Decimal, min_increase: int, source: str
) -> Optional[str]:
    """The failure text when ``new`` grew past the tolerance over ``old``, else None: it fails
    when the increase is above ``max_increase`` percent of ``old`` and not below ``min_increase``."""
    increase = new - old
    if increase <= 0 or increase < min_increase or Decimal(increase) * 100 <= Decimal(old) * max_increase:
        return None
    growth = f"+{increase * 100 / old:.1f}%" if old else "from nothing"
    return (
        f"Test's peak grew beyond the baseline ({source})\n"
        f"  baseline peak {format_size(old)} ({old} bytes), now {format_size(new)} ({new} bytes): "
        f"+{format_size(increase)} ({growth})\n"
        f"  tolerance {tolerance_text(max_increase, min_increase)}"
    )


def summary_lines(
    baseline: Baseline, peaks: Mapping[str, int], max_increase: Decimal, min_increase: int, most: int = 5
) -> list[str]:
    """Counts, then the biggest increases and decreases against the baseline."""
    changes = [(peak - baseline.tests[n].peak_bytes, n) for n, peak in peaks.items() if n in baseline.tests]
    failed = sum(
        1
        for delta, n in changes
        if increase_failure(baseline.tests[n].peak_bytes, peaks[n], max_increase, min_increase, "") is not None
    )
    new = sum(1 for n in peaks if n not in baseline.tests)
    missing = sum(1 for n in baseline.tests if n not in peaks)
    lines = [
        f"{len(changes)} tests compared with {baseline.path.name} (tolerance {tolerance_text(max_increase, min_increase)}): "
        f"{failed} grew beyond it; {new} not in the baseline; {missing} in the baseline did not run"
    ]

    def rows(title: str, picked: list[tuple[int, str]]) -> None:
        if not picked:
            return
        lines.append(title)
        for delta, n in picked:
            old = baseline.tests[n].peak_bytes
            pct = f"{delta * 100 / old:+.1f}%" if old else "new"
            sign = "+" if delta > 0 else "-"
            lines.append(f"  {sign}{format_size(abs(delta)):>9} {pct:>8}  {format_size(old)} -> {format_size(peaks[n])}  {n}")

    rows("biggest increases:", sorted((c for c in changes if c[0] > 0), reverse=True)[:most])
    rows("biggest decreases:", sorted(c for c in changes if c[0] < 0)[:most])
    return lines
