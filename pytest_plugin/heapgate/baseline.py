"""Baselines: every test's peak and leaked bytes in a JSON file meant to be committed
(``--heapgate-save``), read back for ``--heapgate-compare``. The comparison (the tolerance,
the failure text and the session's table of changes) is the Rust core's
(``report/baseline.rs``).

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
from pathlib import Path
from typing import Any, Mapping

__all__ = ["SCHEMA", "VERSION", "Baseline", "BaselineError", "Entry", "save"]

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
