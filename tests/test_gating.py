"""Numbers a team can gate on (issue 7): only the test's own memory, defaults for every test,
warm-up, repeat-run leak growth, reruns."""

from __future__ import annotations

import json
import re

import pytest

from conftest import peaks


def test_a_lingering_thread_is_charged_only_with_all_threads(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_linger="""
        import threading, time
        import pytest, hgtest

        stop = threading.Event()

        def churn():
            while not stop.is_set():
                hgtest.malloc_free(5_000_000)
                time.sleep(0.001)

        def test_leaves_a_thread_running():
            threading.Thread(target=churn, daemon=True).start()
            time.sleep(0.05)

        @pytest.mark.limit_memory(1_000_000 + 1024)
        def test_default_rule():
            for _ in range(20):
                hgtest.malloc_free(1_000_000)
                time.sleep(0.005)

        @pytest.mark.limit_memory(1_000_000 + 1024, all_threads=True)
        def test_all_threads():
            for _ in range(20):
                hgtest.malloc_free(1_000_000)
                time.sleep(0.005)
            stop.set()
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_all_threads FAILED*", "*charged: allocations of every thread during the test call (all_threads=True)*"])


def test_default_limits_from_ini_markers_override_and_none_opts_out(run, pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        heapgate_limit_memory = 1 MiB
        """
    )
    pytester.makepyfile(
        test_defaults="""
        import pytest, hgtest

        def test_unmarked_over():
            hgtest.malloc_free(2_000_000)

        def test_unmarked_under():
            hgtest.malloc_free(10_000)

        @pytest.mark.limit_memory("4 MiB")
        def test_marker_overrides():
            hgtest.malloc_free(2_000_000)

        @pytest.mark.limit_memory(None)
        def test_opted_out():
            hgtest.malloc_free(2_000_000)
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    assert "test_unmarked_over FAILED" in out
    assert "Test was limited to 1.0MiB but allocated 1.9MiB at its peak" in out
    assert re.search(r"heapgate: 2 tests? under a default limit, 1 under a marker", out), out


@pytest.mark.parametrize("value", ["lots", "-1MB"])
def test_a_bad_default_limit_is_a_usage_error(run, pytester: pytest.Pytester, value: str) -> None:
    pytester.makeini(f"[pytest]\nheapgate_limit_memory = {value}\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*heapgate_limit_memory*{value}*"])


def test_default_leak_limit_from_the_command_line(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_leak_default="""
        import hgtest

        def test_holds():
            hgtest.hold(500_000)
        """
    )
    result = run("--heapgate-limit-leaks=100KB")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["Test was limited to 100.0KiB of leaked memory per location*"])


ORDER_TESTS = """
import functools, pytest, hgtest

@functools.lru_cache(maxsize=None)
def table():
    return [bytearray(100) for _ in range(1000)]

def test_a():
    table()
    hgtest.malloc_free(300_000)

def test_b():
    table()
    hgtest.malloc_free(200_000)

def test_c():
    hgtest.malloc_free(100_000)
"""

REVERSE = """
def pytest_collection_modifyitems(items):
    items.reverse()
"""


def _json_peaks(pytester: pytest.Pytester) -> dict[str, int]:
    report = json.loads((pytester.path / "out" / "heapgate.json").read_text())
    return {t["nodeid"].split("::")[-1]: t["peak_bytes"] for t in report["tests"]}


def test_warmup_makes_peaks_independent_of_test_order(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_order=ORDER_TESTS)
    run("--heapgate", "--heapgate-warmup=1", "--heapgate-dir=out").assert_outcomes(passed=3)
    forward = _json_peaks(pytester)
    pytester.makeconftest(REVERSE)
    run("--heapgate", "--heapgate-warmup=1", "--heapgate-dir=out").assert_outcomes(passed=3)
    backward = _json_peaks(pytester)
    (pytester.path / "conftest.py").unlink()
    run("--heapgate", "--heapgate-warmup=1", "--heapgate-dir=out", "test_order.py::test_b").assert_outcomes(passed=1)
    alone = _json_peaks(pytester)
    # Without warm-up the first test to call table() would carry the cache's 100 kB.
    assert forward["test_b"] == backward["test_b"] == alone["test_b"]
    assert forward == backward
    assert 200_000 <= forward["test_b"] <= 200_000 + 4096


def test_warmup_is_recorded_in_the_report(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marked="""
        import pytest, hgtest

        @pytest.mark.limit_memory("1 KB", warmup=2)
        def test_warm():
            hgtest.malloc_free(5000)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*after 2 warm-up runs*"])


def test_repeat_finds_growth_and_spares_a_cache_filled_once(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_repeat="""
        import functools, hgtest

        registry = []

        def remember(item):
            registry.append(item)

        @functools.lru_cache(maxsize=None)
        def expensive(n):
            return bytearray(n)

        def test_c_extension_leaks_per_call():
            hgtest.hold(1024)

        def test_python_list_grows():
            remember(bytearray(2000))

        def test_cache_warms_once():
            expensive(50_000)
        """
    )
    result = run("--heapgate-repeat=5", "-v")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "test_cache_warms_once PASSED" in out
    result.stdout.fnmatch_lines(
        [
            "Live memory grew on each of the last 4 of 5 runs of the test*",
            "  growth per run: +1024 bytes, +1024 bytes, +1024 bytes, +1024 bytes",
            "Growing locations (allocating frame first):",
            "  #1 +1.0KiB per run (+1024, +1024, +1024, +1024 bytes) through malloc",
            "      test_c_extension_leaks_per_call at test_repeat.py:13",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "_* test_python_list_grows _*",
            "Live memory grew on each of the last 4 of 5 runs of the test*",
            "  #1 +2.0KiB per run (+2048, +2048, +2048, +2048 bytes) through PyObject_Malloc",
            "      test_python_list_grows at test_repeat.py:16",
        ]
    )


def test_a_rerun_is_tracked_afresh_and_reports_the_last_run(run, pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_rerunfailures", reason=".ci/test installs pytest-rerunfailures")
    pytester.makepyfile(
        test_flaky="""
        import pytest, hgtest

        attempts = []

        @pytest.mark.flaky(reruns=2)
        @pytest.mark.limit_memory("1 MB")
        def test_flaky():
            attempts.append(1)
            if len(attempts) == 1:
                hgtest.malloc_free(2_000_000)
            else:
                hgtest.malloc_free(300_000)
        """
    )
    result = run("-p", "rerunfailures", "--heapgate-dir=out")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1 and outcomes.get("rerun") == 1, outcomes
    out = result.stdout.str()
    assert "already being tracked" not in out
    assert _json_peaks(pytester) == {"test_flaky": 300_000}


def test_a_tight_limit_holds_under_xdist_with_the_same_peak(run, pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist", reason=".ci/test installs pytest-xdist")
    pytester.makepyfile(
        test_tight="""
        import pytest, hgtest

        @pytest.mark.limit_memory(3_000_001 + 4096)
        def test_tight():
            hgtest.malloc_free(3_000_001)

        @pytest.mark.parametrize("n", range(6))
        def test_neighbours(n):
            hgtest.malloc_free(1_000_000 * (n + 1))
        """
    )
    run("--heapgate-dir=out").assert_outcomes(passed=7)
    serial = _json_peaks(pytester)["test_tight"]
    for _ in range(3):
        run("-n", "2", "--heapgate-dir=out").assert_outcomes(passed=7)
        assert _json_peaks(pytester)["test_tight"] == serial == 3_000_001
