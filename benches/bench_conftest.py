"""Copied by alloc_bench.py as conftest.py next to the workloads: writes every test's call
phase (pytest's report.duration and the test's own "loop_s" property) as JSON to the file
named by $HEAPGATE_BENCH_OUT when the session ends. Runs after the call, so it times nothing."""

import json
import os
from typing import Any

import pytest

_results: list[dict[str, Any]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        props = dict(report.user_properties)
        _results.append(
            {
                "test": report.nodeid.split("::")[-1],
                "outcome": report.outcome,
                "call_s": report.duration,
                "loop_s": props.get("loop_s"),
            }
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("HEAPGATE_BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(_results, f)
