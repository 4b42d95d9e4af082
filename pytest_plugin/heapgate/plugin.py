"""heapgate's pytest plugin: options and markers in, the core's numbers out, failures as text.

Tracking covers exactly the test's call phase (``pytest_runtest_call``); setup and teardown
are not measured. Markers are enforced whenever the plugin is installed.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator, Optional

import pytest

from .formatting import peak_failure
from .limits import format_size
from .markers import MARKERS, Checks, MarkerError, checks_for

if TYPE_CHECKING:
    from ._native import Report

try:
    from . import _native

    _native.install()
    UNAVAILABLE: Optional[str] = None
except (ImportError, RuntimeError) as e:  # TrackingError is a RuntimeError
    _native = None  # type: ignore[assignment]
    UNAVAILABLE = f"heapgate: memory tracking is unavailable here ({e}); tracking is Linux-only"

CHECKS = pytest.StashKey[Checks]()
RESULT = pytest.StashKey["TestResult"]()


@dataclass
class TestResult:
    """One tracked test's outcome as the summary and reports see it."""

    nodeid: str
    report: Report
    checks: Checks
    failure: Optional[str] = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("heapgate", "exact memory assertions (heapgate)")
    group.addoption(
        "--heapgate",
        action="store_true",
        default=None,
        help="Track every test (not only marked ones) and show the memory summary.",
    )
    group.addoption(
        "--native",
        action="store_true",
        default=None,
        help="Also record native stacks (C/C++/Rust frames, symbolized lazily for reports).",
    )
    group.addoption(
        "--hide-heapgate-summary",
        action="store_true",
        default=None,
        help="Do not show heapgate's summary at the end of the session.",
    )
    group.addoption(
        "--most-allocations",
        type=int,
        default=None,
        metavar="N",
        help="Show the N tests with the highest peak in the summary (0: all; default 5).",
    )
    group.addoption(
        "--stacks",
        type=int,
        default=None,
        metavar="N",
        help="Show at most N frames of each allocation stack in failures (default: all).",
    )
    parser.addini("heapgate", "Track every test (as --heapgate).", type="bool", default=False)
    parser.addini("native", "Record native stacks (as --native).", type="bool", default=False)
    parser.addini("hide_heapgate_summary", "Hide the summary (as --hide-heapgate-summary).", type="bool", default=False)
    parser.addini("most_allocations", "Tests shown in the summary (as --most-allocations).", default="5")
    parser.addini("stacks", "Frames shown per stack (as --stacks).", default="")


def _option(config: pytest.Config, name: str) -> Any:
    """The flag if given, else the ini value: flags default to None so ini keys are read."""
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def _int_option(config: pytest.Config, name: str, minimum: int) -> Optional[int]:
    value = _option(config, name)
    if value in ("", None):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"heapgate: {name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise pytest.UsageError(f"heapgate: {name} must be at least {minimum}, not {number}")
    return number


class HeapgatePlugin:
    """Session state: which tests were tracked and what they allocated."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.track_all = bool(_option(config, "heapgate"))
        self.native = bool(_option(config, "native"))
        self.hide_summary = bool(_option(config, "hide_heapgate_summary"))
        self.most_allocations = _int_option(config, "most_allocations", 0)
        self.max_frames = _int_option(config, "stacks", 1)
        self.results: list[TestResult] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        try:
            item.stash[CHECKS] = checks_for(item)
            return
        except MarkerError as e:
            problem = f"heapgate: {e}"
        # Outside the except block, so the error shows alone, not as a chained traceback.
        pytest.fail(problem, pytrace=False)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, None]:
        checks = item.stash.get(CHECKS, Checks())
        if _native is None or not (checks or self.track_all):
            yield
            return
        # The frame that runs this hook stays on the stack for the whole call: stacks end there.
        boundary = sys._getframe(1)
        _native.start(_entry_codes(item), boundary, checks.thread_mode, self.native)
        try:
            yield
        finally:
            report = _native.stop()
        item.stash[RESULT] = TestResult(item.nodeid, report, checks)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
        outcome = yield
        if call.when != "call" or RESULT not in item.stash:
            return
        result = item.stash[RESULT]
        self.results.append(result)
        failure = self._failure(result)
        if failure is None:
            return
        result.failure = failure
        rep: pytest.TestReport = outcome.get_result()
        if rep.passed:
            rep.outcome = "failed"
            rep.longrepr = failure
        else:
            rep.sections.append(("heapgate", failure))

    def _failure(self, result: TestResult) -> Optional[str]:
        lm = result.checks.limit_memory
        if lm is not None and result.report.peak_bytes > lm.limit:
            return peak_failure(
                lm.limit,
                result.report,
                result.checks.thread_mode,
                rootpath=self.config.rootpath,
                max_frames=self.max_frames,
            )
        return None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.hide_summary or not self.results:
            return
        n = self.most_allocations
        ranked = sorted(self.results, key=lambda r: r.report.peak_bytes, reverse=True)
        shown = ranked if not n else ranked[:n]
        tr = terminalreporter
        tr.write_sep("=", "heapgate: memory per test")
        header = f"{'peak':>10} {'allocations':>11} {'leaked':>10} {'limit':>10}  test"
        tr.write_line(header)
        for r in shown:
            lm = r.checks.limit_memory
            limit = format_size(lm.limit) if lm else "-"
            mark = "  FAILED" if r.failure else ""
            tr.write_line(
                f"{format_size(r.report.peak_bytes):>10} {r.report.total_count:>11} "
                f"{format_size(r.report.leaked_bytes):>10} {limit:>10}  {r.nodeid}{mark}"
            )
        if len(shown) < len(ranked):
            tr.write_line(f"({len(ranked) - len(shown)} more tracked tests; --most-allocations=0 shows all)")


def _entry_codes(item: pytest.Item) -> list[Any]:
    """Code objects of the test function and what it wraps. Empty for async tests and for
    items without a Python function: those are charged for the whole call window."""
    func = getattr(item, "obj", None)
    func = getattr(func, "__func__", func)
    if func is None or inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        return []
    codes = []
    seen = 0
    while func is not None and seen < 8:
        code = getattr(func, "__code__", None)
        if code is not None and code not in codes:
            codes.append(code)
        func = getattr(func, "__wrapped__", None)
        seen += 1
    return codes


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    if UNAVAILABLE is not None:
        config.issue_config_time_warning(pytest.PytestWarning(UNAVAILABLE), stacklevel=2)
        return
    config.pluginmanager.register(HeapgatePlugin(config), "heapgate-session")
