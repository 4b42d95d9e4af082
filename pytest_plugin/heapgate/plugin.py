"""heapgate's pytest plugin: options and markers in, the core's numbers out, failures as text.

Tracking covers the test's call phase (``pytest_runtest_call``); with
``--heapgate-include-fixtures`` it starts before the test's fixtures are set up and the peak
spans setup and call. Teardown is never measured. Markers are enforced whenever the plugin is
installed.

Each tracked test's results travel in its call-phase ``TestReport`` (attribute ``heapgate``: the
JSON of one typed record, ``Record.session_test``), and the core's ``SessionReport`` collects
the records seen in ``pytest_runtest_logreport``: in a plain session that is this process; under
pytest-xdist it is the controller, which receives every worker's reports, so there is one
summary and one session report. The summary, ``heapgate.json``, its JUnit file and baselines
come from that one object. Workers write only their tests' captures and flamegraphs.
"""

from __future__ import annotations

import gc
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Generator, Optional

import pytest

from . import __version__
from .artifacts import ArtifactDir, DirError, Written, process_facts
from .baseline import Baseline, BaselineError, Entry
from .baseline import save as save_baseline
from .failures import Judged, Policy, judge
from .leakcheck import Suppression, SuppressionError, load_suppressions
from .markers import MARKERS, Checks, MarkerError, checks_for
from .repeat import warm_up
from .options import add_options, read_settings

if TYPE_CHECKING:
    from ._native import Record, Report

try:
    from . import _native

    # Nothing is patched yet: the hooks go in at the first tracked test.
    _native.check_supported()
    UNAVAILABLE: Optional[str] = None
except (ImportError, RuntimeError) as e:  # TrackingError is a RuntimeError
    _native = None  # type: ignore[assignment]
    UNAVAILABLE = f"heapgate: memory tracking is unavailable here ({e}); tracking is Linux-only, tests run untracked"

CHECKS = pytest.StashKey[Checks]()
RESULT = pytest.StashKey["TestResult"]()
# Tracking started in setup (--heapgate-include-fixtures) and not stopped yet.
ACTIVE = pytest.StashKey[bool]()
# The attribute of a call-phase TestReport that carries heapgate's results (see _transport).
REPORT_ATTR = "heapgate"
# The call report's section with what the native leak scan says besides lost memory: the
# still-reachable blocks by location (-v) and HEAPGATE_EXPLAIN_LEAKS' lines.
SCAN_SECTION = "heapgate: native leak scan"
CACHE_PREFIX = "heapgate/peak"


@dataclass
class TestResult:
    """One tracked test's outcome, in the process that ran it."""

    nodeid: str
    report: Report
    checks: Checks
    failure: Optional[str] = None
    record: Optional[Record] = None
    written: Optional[Written] = None
    absorbed: Optional[list[tuple[int, int, int]]] = None
    warmup: int = 0
    # Live bytes, and the checkpoint reports, after each run of a repeated call.
    totals: list[int] = field(default_factory=list)
    checkpoints: list[Report] = field(default_factory=list)
    # HEAPGATE_EXPLAIN_LEAKS=1: where the leak scan found references to the test's blocks.
    explanations: list[str] = field(default_factory=list)
    scan_notes: Optional[str] = None


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


class HeapgatePlugin:
    """Session state: the options, and what the tracked tests allocated."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings = read_settings(config)
        self.track_all = self.settings.track_all
        self.native = self.settings.native
        self.max_frames = self.settings.max_frames
        self.is_worker = isinstance(getattr(config, "workerinput", None), dict)
        # A child the test forked that returns into pytest instead of exiting runs the rest of
        # the session as a copy of this process: it must neither track nor report.
        self.pid = os.getpid()
        self.artifacts = _artifact_dir(self.settings.artifacts_dir)
        self.artifacts_all = self.settings.artifacts_all
        self.facts = process_facts(config.rootpath)
        family = config.getini("junit_family") if _has_ini(config, "junit_family") else "xunit2"
        # pytest writes testcase properties for xunit1/legacy; xunit2's schema has none there.
        self.junit_properties = family in ("xunit1", "legacy")
        self.problems: list[str] = []
        self.native_leaks = self.settings.native_leaks
        self.suppressions = _suppressions(self.settings.suppressions)
        self.baseline: Optional[Baseline] = None
        if self.settings.compare is not None:
            try:
                self.baseline = Baseline.load(self.settings.compare)
            except BaselineError as e:
                raise pytest.UsageError(str(e)) from None
        if self.settings.save is not None and not self.is_worker:
            _check_writable_file(self.settings.save)
        if self.settings.fail_on_increase and getattr(config, "cache", None) is None:
            raise pytest.UsageError(
                "heapgate: --fail-on-increase compares with the previous run kept in pytest's cache; "
                "it cannot work with the cacheprovider plugin disabled (-p no:cacheprovider)"
            )
        self.policy = Policy(
            rootpath=config.rootpath,
            max_frames=self.max_frames,
            include_tracers=self.settings.include_tracers,
            repeat_threshold=self.settings.repeat_threshold,
            max_increase=self.settings.max_increase,
            min_increase=self.settings.min_increase,
            verbose=config.option.verbose > 0,
            suppressions=self.suppressions,
        )
        # What the session's reports carried (the last attempt of a rerun test).
        assert _native is not None
        self.session = _native.SessionReport(self.facts)

    def pytest_report_header(self, config: pytest.Config) -> Optional[list[str]]:
        lines = []
        if self.settings.trace_python_allocators:
            lines.append(
                "heapgate: --trace-python-allocators has no effect: heapgate always counts Python's allocators exactly"
            )
        return lines or None

    def _forked(self) -> bool:
        """Is this a child forked by a test (not the process that configured the session)?"""
        return os.getpid() != self.pid

    def _tracked(self, item: pytest.Item, checks: Checks) -> bool:
        return _native is not None and (bool(checks) or self.track_all) and not self._forked()

    def _start(self, item: pytest.Item, checks: Checks, codes: list[Any], boundary: Optional[FrameType]) -> None:
        assert _native is not None
        # Native leaks are judged by where memory came from: that needs native stacks.
        native = self.native or checks.native_leaks is not None
        _native.start(codes, boundary, checks.thread_mode, native, self.settings.include_tracers)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        try:
            checks = item.stash[CHECKS] = checks_for(
                item,
                self.native_leaks,
                self.settings.limit_memory,
                self.settings.limit_leaks,
                self.settings.all_threads,
            )
            _check_item_kind(item, checks)
        except MarkerError as e:
            problem = f"heapgate: {e}"
        else:
            if self.settings.include_fixtures and self._tracked(item, checks):
                # Fixtures run outside the test function: the whole window is charged, from
                # here to the end of the call. Stacks end at the test protocol's frame, which
                # stays on the stack through setup and call.
                self._start(item, checks, [], _protocol_frame())
                item.stash[ACTIVE] = True
            return
        # Outside the except block, so the error shows alone, not as a chained traceback.
        pytest.fail(problem, pytrace=False)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, None]:
        checks = item.stash.get(CHECKS, Checks())
        started = item.stash.get(ACTIVE, False)
        if not started and not self._tracked(item, checks):
            yield
            return
        assert _native is not None
        # From here, stopping is this hook's job (not teardown's).
        item.stash[ACTIVE] = False
        warmup = checks.warmup if checks.warmup is not None else self.settings.warmup
        repeat = checks.repeat if checks.repeat is not None else self.settings.repeat
        if not started:
            # Untracked runs first: caches built on first use stop depending on test order.
            warm_up(item.runtest, warmup)
            # The frame that runs this hook stays on the stack for the whole call: stacks end there.
            self._start(item, checks, _entry_codes(item), sys._getframe(1))
        totals: list[int] = []
        checkpoints: list[Report] = []
        explanations: list[str] = []
        try:
            # With --heapgate-repeat, all but the last run happen here; pytest runs the last.
            for _ in range(repeat - 1):
                item.runtest()
                if self._forked():
                    break
                gc.collect()
                checkpoints.append(_native.checkpoint())
                totals.append(checkpoints[-1].leaked_bytes)
            yield
            if self._forked():
                return  # nothing is tracked in a child the test forked
            if repeat > 1:
                gc.collect()
                checkpoints.append(_native.checkpoint())
                totals.append(checkpoints[-1].leaked_bytes)
            if checks.native_leaks is not None:
                # Objects the call dropped into CPython's free lists are no leak: free them.
                _native.clear_free_lists()
            # Still tracking: what a collection frees is no leak (and it allocates nothing
            # that is charged, as the test's function is no longer running).
            if checks.limit_leaks is not None:
                # Every byte the test left counts, held by old garbage or not: a full collection.
                gc.collect()
            elif checks.native_leaks is not None:
                # The scan needs only the test's own garbage collected (older objects are its
                # roots): a full collection would cost what the whole process holds.
                _native.collect_test_garbage()
            if checks.native_leaks is not None:
                _native.scan_leaks()
                explanations = _native.leak_explanations()
        finally:
            # A forked child starts untracked (the capture layer's fork handler): nothing to stop.
            report = None if self._forked() else _native.stop()
        if report is None:
            return
        item.stash[RESULT] = TestResult(
            item.nodeid, report, checks, warmup=warmup, totals=totals, checkpoints=checkpoints, explanations=explanations
        )

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, Any, None]:
        # As close to the test's function as a hook gets: what CPython's free lists hold now
        # was allocated before the test, and a leaked object revived from one would hide.
        # (A Python wrapper around the function was tried: its own call's objects were charged
        # to the test, and the test's function was no longer a function.)
        checks = pyfuncitem.stash.get(CHECKS, Checks())
        if checks.native_leaks is None or _native is None or not _native.is_active():
            yield
            return
        _native.clear_free_lists()
        # 3.11+: what runs between here and the function's frame refills the lists (other
        # plugins' pytest_pyfunc_call, and on 3.12+ pytest's call frees the dict it built while
        # pushing the frame): the function's own call empties the list (3.12+: and dict) lists again.
        function = pyfuncitem.obj
        on_call = _native.empty_free_lists_on_call(function, True)
        try:
            yield
        finally:
            if on_call:
                _native.empty_free_lists_on_call(function, False)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        # Tracking started in setup whose call never ran (setup failed, --setup-only, ...).
        if item.stash.get(ACTIVE, False) and _native is not None:
            item.stash[ACTIVE] = False
            if not self._forked():
                _native.stop()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
        outcome = yield
        if call.when == "setup" and call.excinfo is not None and item.stash.get(ACTIVE, False) and _native is not None:
            item.stash[ACTIVE] = False
            if not self._forked():
                _native.stop()
        if call.when == "teardown" and RESULT in item.stash:
            # The full result (every site's stack) lives only until the test is done (its
            # report carries the few numbers the summary needs): kept on the item it would
            # grow the session by ~100 KB a test.
            del item.stash[RESULT]
        if call.when != "call" or RESULT not in item.stash:
            return
        result = item.stash[RESULT]
        rep: pytest.TestReport = outcome.get_result()
        failure = self._failure(result, rep.passed)
        if failure is not None:
            result.failure = failure
            if rep.passed:
                rep.outcome = "failed"
                rep.longrepr = failure
            else:
                rep.sections.append(("heapgate", failure))
        if result.scan_notes:
            rep.sections.append((SCAN_SECTION, result.scan_notes))
        self._artifacts(item, result, rep.outcome)
        setattr(rep, REPORT_ATTR, self._transport(result))

    def _transport(self, result: TestResult) -> str:
        """The test's record for the process that writes the session files (JSON)."""
        assert result.record is not None
        written = result.written or Written()
        problems, self.problems = self.problems, []
        return result.record.session_test(
            written.capture,
            written.flamegraph,
            # The top locations' stacks are resolved only for a report that is written.
            locations=self.artifacts is not None,
            limit_source="marker" if result.checks.from_marker else ("default" if result.checks else None),
            native_leaks=result.checks.native_leaks is not None,
            absorbed=result.absorbed or [],
            problems=problems,
        )

    def _artifacts(self, item: pytest.Item, result: TestResult, outcome: str) -> None:
        """Capture file and flamegraph in --heapgate-dir; properties for --junitxml."""
        lm = result.checks.limit_memory
        written = None
        checks = result.checks
        # The session report's entry is made from the record too, with or without files.
        result.record = result.report.record(
            result.nodeid,
            outcome,
            result.failure,
            lm.limit if lm else None,
            checks.thread_mode,
            self.settings.include_tracers,
            self.facts,
            limit_leaks=checks.limit_leaks.limit if checks.limit_leaks else None,
            native_leaks=checks.native_leaks.limit if checks.native_leaks else None,
        )
        if self.artifacts is not None:
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

    def _failure(self, result: TestResult, passed: bool) -> Optional[str]:
        """Every failed memory check's text, or None (see failures.judge); keeps the cache's
        peak for --fail-on-increase."""
        report, nodeid = result.report, result.nodeid
        cache = getattr(self.config, "cache", None) if result.checks.limit_memory is not None and passed else None
        previous = None
        if cache is not None:
            old = cache.get(f"{CACHE_PREFIX}/{nodeid}", None)
            previous = old.get("peak_bytes") if isinstance(old, dict) else None
            previous = previous if self.settings.fail_on_increase and isinstance(previous, int) else None
        baseline_peak = None
        if self.baseline is not None and nodeid in self.baseline.tests:
            baseline_peak = (self.baseline.tests[nodeid].peak_bytes, f"--heapgate-compare {self.baseline.path.name}")
        judged = judge(
            Judged(
                report,
                result.checks,
                passed,
                previous_peak=previous,
                baseline_peak=baseline_peak,
                warmup=result.warmup,
                totals=result.totals,
                checkpoints=result.checkpoints,
                explanations=result.explanations,
            ),
            self.policy,
        )
        if result.checks.native_leaks is not None:
            result.absorbed = judged.absorbed
            result.scan_notes = judged.scan_notes
        # A peak above the previous run's fails and leaves the cache's value for the next run.
        if cache is not None and (previous is None or report.peak_bytes <= previous):
            cache.set(f"{CACHE_PREFIX}/{nodeid}", {"peak_bytes": report.peak_bytes})
        return judged.text

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, REPORT_ATTR, None)
        if report.when != "call" or not isinstance(data, str):
            return
        self.session.add(data)  # a rerun's last attempt counts, in the order it ran

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker or self._forked():
            return  # the controller writes the session files from the reports it receives
        if self.artifacts is not None:
            try:
                self.artifacts.write_session(self.session)
            except OSError as e:
                self.problems.append(f"heapgate: cannot write the session report: {e}")
        if self.settings.save is not None:
            tests = {nodeid: Entry(peak, leaked) for nodeid, peak, leaked in self.session.peaks()}
            try:
                save_baseline(self.settings.save, tests, __version__)
            except OSError as e:
                self.problems.append(f"heapgate: cannot write the baseline {self.settings.save}: {e}")
            else:
                self.problems.append(f"heapgate: baseline of {len(tests)} tests written to {self.settings.save}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._forked():
            return
        tr = terminalreporter
        session = self.session
        for problem in session.problems():
            tr.write_line(problem, red=True)
        for problem in self.problems:
            tr.write_line(problem, red=not problem.startswith("heapgate: baseline of"))
        self._native_leak_summary(tr)
        if self.artifacts is not None and session.tracked:
            files = session.captures_written
            tr.write_line(
                f"heapgate: {self.artifacts.json_path.name}, {self.artifacts.junit_path.name} "
                f"and {files} test capture{'s' if files != 1 else ''} in {self.artifacts.path}"
            )
        if self.settings.hide_summary or not session.tracked:
            return
        tr.write_sep("=", "heapgate: memory per test")
        for line in session.summary_lines(self.settings.most_allocations or 0):
            tr.write_line(line)
        defaults, markers = session.limit_sources()
        if defaults or self.settings.limit_memory is not None or self.settings.limit_leaks is not None:
            tr.write_line(
                f"heapgate: {defaults} test{'s' if defaults != 1 else ''} under a default limit, {markers} under a marker"
            )
        if self.baseline is not None:
            tr.write_sep("=", "heapgate: compared with the baseline")
            peaks = {nodeid: entry.peak_bytes for nodeid, entry in self.baseline.tests.items()}
            tolerance = _native.Tolerance(self.settings.max_increase, self.settings.min_increase)
            most = self.settings.most_allocations or 5
            for line in session.baseline_summary(self.baseline.path.name, peaks, tolerance, most):
                tr.write_line(line)

    def _native_leak_summary(self, tr: Any) -> None:
        """Suppressions' effect; still-reachable native memory in verbose mode only."""
        if self.native_leaks is None and not self.session.native_leak_checks:
            return
        totals = self.session.absorbed(len(self.suppressions))
        for s, (nbytes, blocks) in zip(self.suppressions, totals):
            tr.write_line(f"heapgate: suppression leak:{s.pattern} ({s.source}) absorbed {nbytes} bytes in {blocks} blocks")
        # Failed tests show their section with the failure; passed ones here (unless -rP does).
        if tr.hasopt("P"):
            return
        sections = [
            (rep.nodeid, content)
            for rep in tr.stats.get("passed", [])
            if getattr(rep, "when", None) == "call"
            for name, content in rep.sections
            if name == SCAN_SECTION
        ]
        if sections:
            tr.write_sep("=", SCAN_SECTION)
            for nodeid, content in sections:
                tr.write_sep("_", nodeid)
                tr.write_line(content)


def _check_item_kind(item: pytest.Item, checks: Checks) -> None:
    """A limit marker needs a Python test function to measure; on any other item (a doctest,
    a YAML test, another plugin's item) it is an error of that item."""
    if isinstance(item, pytest.Function):
        return
    named = [
        name
        for name, check in (("limit_memory", checks.limit_memory), ("limit_leaks", checks.limit_leaks))
        if check is not None
    ]
    if checks.native_leaks is not None and checks.native_leaks.from_marker:
        named.append("native_leaks")
    if named:
        raise MarkerError(
            f"@pytest.mark.{named[0]} applies to Python test functions; {item.nodeid!r} is a "
            f"{type(item).__name__}, which heapgate does not measure against a marker"
        )


def _protocol_frame() -> Optional[FrameType]:
    """pytest's ``runtestprotocol`` frame: it runs setup, call and teardown of one test."""
    frame: Optional[FrameType] = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "runtestprotocol" and frame.f_globals.get("__name__") == "_pytest.runner":
            return frame
        frame = frame.f_back
    return None


def _check_writable_file(path: Path) -> None:
    """--heapgate-save's file must be writable: say so before the tests run, not after."""
    parent = path.parent
    if path.is_dir():
        raise pytest.UsageError(f"heapgate: --heapgate-save {str(path)!r} is a directory, not a file")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise pytest.UsageError(f"heapgate: --heapgate-save {str(path)!r} cannot be written")


def _suppressions(path: Optional[Path]) -> list[Suppression]:
    if path is None:
        return []
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


def _artifact_dir(path: Optional[Path]) -> Optional[ArtifactDir]:
    """--heapgate-dir or ini heapgate_dir; a directory that cannot be written is a usage error."""
    if path is None:
        return None
    try:
        return ArtifactDir(path)
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
