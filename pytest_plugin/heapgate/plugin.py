"""heapgate's pytest plugin: options and markers in, the core's numbers out, failures as text.

Tracking covers exactly the test's call phase (``pytest_runtest_call``); setup and teardown
are not measured. Markers are enforced whenever the plugin is installed.
"""

from __future__ import annotations

import gc
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Optional

import pytest

from .artifacts import ArtifactDir, DirError, Written, process_facts
from .formatting import peak_failure, summary_lines
from .leakcheck import Suppression, SuppressionError, limit_leaks_failure, load_suppressions, native_leaks_result
from .limits import LimitError, parse_size
from .markers import MARKERS, Checks, MarkerError, checks_for

if TYPE_CHECKING:
    from ._native import Record, Report

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
    reachable_native: tuple[int, int] = (0, 0)
    record: Optional[Record] = None
    written: Optional[Written] = None


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
        "--native-leaks",
        nargs="?",
        const="0",
        default=None,
        metavar="LIMIT",
        help="Check every test for memory lost by native code (definitely and indirectly lost, "
        "by reachability, like valgrind); fail above LIMIT (default 0). Implies --native.",
    )
    group.addoption(
        "--native-leaks-suppressions",
        default=None,
        metavar="FILE",
        help="LeakSanitizer-style suppressions ('leak:PATTERN' lines) for --native-leaks.",
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
    group.addoption(
        "--heapgate-dir",
        default=None,
        metavar="DIR",
        help="Write a capture file and a flamegraph SVG for each test that failed a memory check, "
        "plus heapgate.json and heapgate-junit.xml for the session, to DIR.",
    )
    group.addoption(
        "--heapgate-dir-all",
        action="store_true",
        default=None,
        help="With --heapgate-dir: write a capture file and flamegraph for every tracked test.",
    )
    parser.addini("heapgate", "Track every test (as --heapgate).", type="bool", default=False)
    parser.addini("heapgate_dir", "Directory for reports and artifacts (as --heapgate-dir).", default="")
    parser.addini("heapgate_dir_all", "Artifacts for every tracked test (as --heapgate-dir-all).", type="bool", default=False)
    parser.addini("native", "Record native stacks (as --native).", type="bool", default=False)
    parser.addini("native_leaks", "Native leak check for every test: a limit such as 0 or '4KiB' (as --native-leaks).", default="")
    parser.addini("native_leaks_suppressions", "Suppressions file for the native leak check.", default="")
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
        self.artifacts = _artifact_dir(config)
        self.artifacts_all = bool(_option(config, "heapgate_dir_all"))
        self.facts = process_facts(config.rootpath)
        family = config.getini("junit_family") if _has_ini(config, "junit_family") else "xunit2"
        # pytest writes testcase properties for xunit1/legacy; xunit2's schema has none there.
        self.junit_properties = family in ("xunit1", "legacy")
        self.problems: list[str] = []
        self.native_leaks = _native_leaks_default(config)
        self.suppressions = _suppressions(config)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        try:
            item.stash[CHECKS] = checks_for(item, self.native_leaks)
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
        # Native leaks are judged by where memory came from: that needs native stacks.
        native = self.native or checks.native_leaks is not None
        _native.start(_entry_codes(item), boundary, checks.thread_mode, native)
        try:
            yield
            if checks.needs_collect:
                # Still tracking: what the collection frees is no leak (and it allocates
                # nothing that is charged, as the test's function is no longer running).
                gc.collect()
            if checks.native_leaks is not None:
                _native.scan_leaks()
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
        rep: pytest.TestReport = outcome.get_result()
        if failure is not None:
            result.failure = failure
            if rep.passed:
                rep.outcome = "failed"
                rep.longrepr = failure
            else:
                rep.sections.append(("heapgate", failure))
        self._artifacts(item, result, rep.outcome)

    def _artifacts(self, item: pytest.Item, result: TestResult, outcome: str) -> None:
        """Capture file and flamegraph in --heapgate-dir; properties for --junitxml."""
        lm = result.checks.limit_memory
        written = None
        if self.artifacts is not None:
            result.record = result.report.record(
                result.nodeid,
                outcome,
                result.failure is not None,
                lm.limit if lm else None,
                result.checks.thread_mode,
                self.facts,
            )
            if result.failure is not None or self.artifacts_all:
                try:
                    written = result.written = self.artifacts.write_test(result.record)
                except OSError as e:
                    self.problems.append(f"heapgate: cannot write artifacts for {result.nodeid}: {e}")
        if self.junit_properties:
            svg = str(self.artifacts.path / written.flamegraph) if self.artifacts and written and written.flamegraph else ""
            item.user_properties.extend(
                [
                    ("heapgate_peak_bytes", result.report.peak_bytes),
                    ("heapgate_limit_bytes", lm.limit if lm else ""),
                    ("heapgate_leaked_bytes", result.report.leaked_bytes),
                    ("heapgate_flamegraph", svg),
                ]
            )

    def _failure(self, result: TestResult) -> Optional[str]:
        """Every failed memory check's text, or None."""
        checks, report, root = result.checks, result.report, self.config.rootpath
        failures = []
        lm = checks.limit_memory
        if lm is not None and report.peak_bytes > lm.limit:
            failures.append(peak_failure(lm.limit, report, checks.thread_mode, rootpath=root, max_frames=self.max_frames))
        ll = checks.limit_leaks
        if ll is not None:
            text = limit_leaks_failure(ll.limit, report, ll.filter_fn, rootpath=root, max_frames=self.max_frames)
            if text is not None:
                failures.append(text)
        nl = checks.native_leaks
        if nl is not None:
            native = native_leaks_result(nl.limit, report, self.suppressions, rootpath=root, max_frames=self.max_frames)
            result.reachable_native = (native.reachable_bytes, native.reachable_blocks)
            if native.failure is not None:
                failures.append(native.failure)
        return "\n\n".join(failures) if failures else None

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.artifacts is None:
            return
        tests = [(r.record, r.written or Written()) for r in self.results if r.record is not None]
        if not tests and getattr(self.config.option, "dist", "no") not in ("no", None):
            return  # the pytest-xdist controller: its workers write the reports
        try:
            self.artifacts.write_session(tests, self.facts)
        except OSError as e:
            self.problems.append(f"heapgate: cannot write the session report: {e}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        for problem in self.problems:
            tr.write_line(problem, red=True)
        self._native_leak_summary(tr)
        if self.artifacts is not None and self.results:
            files = sum(1 for r in self.results if r.written is not None)
            tr.write_line(
                f"heapgate: {self.artifacts.json_path.name}, {self.artifacts.junit_path.name} "
                f"and {files} test capture{'s' if files != 1 else ''} in {self.artifacts.path}"
            )
        if self.hide_summary or not self.results:
            return
        rows = [
            (
                r.report.peak_bytes,
                r.report.total_count,
                r.report.leaked_bytes,
                r.checks.limit_memory.limit if r.checks.limit_memory else None,
                r.nodeid,
                r.failure is not None,
            )
            for r in self.results
        ]
        tr.write_sep("=", "heapgate: memory per test")
        for line in summary_lines(rows, self.most_allocations):
            tr.write_line(line)


    def _native_leak_summary(self, tr: Any) -> None:
        """Suppressions' effect; still-reachable native memory in verbose mode only."""
        if self.native_leaks is None and not any(r.checks.native_leaks for r in self.results):
            return
        for s in self.suppressions:
            tr.write_line(f"heapgate: suppression leak:{s.pattern} ({s.source}) absorbed {s.bytes} bytes in {s.blocks} blocks")
        if self.config.option.verbose > 0:
            for r in self.results:
                reachable, blocks = r.reachable_native
                if reachable:
                    tr.write_line(f"heapgate: {r.nodeid}: {reachable} bytes in {blocks} blocks of native memory still reachable")


def _native_leaks_default(config: pytest.Config) -> Optional[int]:
    """--native-leaks[=LIMIT] or ini native_leaks: the limit every test is checked against."""
    flag = config.getoption("native_leaks")
    value = flag if flag is not None else str(config.getini("native_leaks")).strip()
    if value in ("", None) or str(value).lower() in ("false", "no", "off"):
        return None
    if str(value).lower() in ("true", "yes", "on"):
        return 0
    try:
        return parse_size(str(value) if not str(value).isdigit() else int(value), "--native-leaks limit")
    except LimitError as e:
        raise pytest.UsageError(f"heapgate: {e}") from None


def _suppressions(config: pytest.Config) -> list[Suppression]:
    flag = config.getoption("native_leaks_suppressions")
    if flag:
        path = Path(config.invocation_params.dir, flag)
    else:
        ini = str(config.getini("native_leaks_suppressions")).strip()
        if not ini:
            return []
        path = Path(config.rootpath, ini)
    try:
        return load_suppressions(path)
    except SuppressionError as e:
        raise pytest.UsageError(str(e)) from None


def _has_ini(config: pytest.Config, name: str) -> bool:
    try:
        config.getini(name)
    except ValueError:
        return False
    return True


def _artifact_dir(config: pytest.Config) -> Optional[ArtifactDir]:
    """--heapgate-dir (relative to the invocation directory) or ini heapgate_dir (relative to
    the rootdir); a directory that cannot be written is a usage error."""
    flag = config.getoption("heapgate_dir")
    if flag:
        path = Path(config.invocation_params.dir, flag)
    else:
        ini = config.getini("heapgate_dir")
        if not ini:
            return None
        path = Path(config.rootpath, str(ini))
    suffix = ""
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict):
        suffix = str(workerinput.get("workerid", ""))
    try:
        return ArtifactDir(path, suffix)
    except DirError as e:
        raise pytest.UsageError(str(e)) from None


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
