"""Warm-up runs and repeat runs (the job pytest-leaks' ``-R`` does on debug builds, on a normal
CPython): run a test's call several times. Whether its live memory grew on every run, and the
text that says where, are the Rust core's (``report/growth.rs``)."""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["warm_up"]


def warm_up(runtest: Callable[[], Any], runs: int) -> None:
    """Run the test's call ``runs`` times untracked, so caches built on first use, first
    imports and interned strings do not depend on which tests ran before."""
    for _ in range(runs):
        runtest()
