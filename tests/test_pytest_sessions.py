"""pytest integration: pytest-xdist (one summary, one merged heapgate.json, the same numbers
as a serial run), `heapgate merge`, baselines (--heapgate-save/--heapgate-compare),
--fail-on-increase, async tests (pytest-asyncio, anyio on asyncio and trio), class and
unittest tests, fixtures of every scope and --heapgate-include-fixtures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from heapgate.cli import main as heapgate_main

pytest.importorskip("xdist", reason="pytest-xdist is in the test extra")

SUITE = """
import threading
import unittest
import pytest, hgtest

@pytest.mark.limit_memory("1MB")
def test_over():
    hgtest.malloc_free(3_000_001)

@pytest.mark.limit_memory("4MB")
def test_under():
    hgtest.calloc_free(1000, 2049)

@pytest.mark.parametrize("n", [100_000, 200_000, 300_000])
def test_param(n):
    hgtest.malloc_free(n)

def test_threads():
    hgtest.threads_malloc_free(4, 1_000_000)

class TestGroup:
    @pytest.mark.limit_memory("1MB")
    def test_method_over(self):
        hgtest.mmap_munmap(8_388_608)

    def test_method(self):
        hgtest.realloc_free(1000, 5_000_000)

class Legacy(unittest.TestCase):
    def test_unittest(self):
        hgtest.malloc_free(1_234_567)

def test_fails_itself():
    hgtest.malloc_free(10_000)
    assert False
"""

NATIVE_PEAKS = {
    "test_suite.py::test_over": 3_000_001,
    "test_suite.py::test_under": 2_049_000,
    "test_suite.py::test_param[100000]": 100_000,
    "test_suite.py::test_param[200000]": 200_000,
    "test_suite.py::test_param[300000]": 300_000,
    "test_suite.py::test_threads": 4_000_000,
    "test_suite.py::TestGroup::test_method_over": 8_388_608,
    "test_suite.py::TestGroup::test_method": 5_000_000,
    "test_suite.py::Legacy::test_unittest": 1_234_567,
    "test_suite.py::test_fails_itself": 10_000,
}


def _tests(path: Path) -> dict[str, dict]:
    return {t["nodeid"]: t for t in json.loads(path.read_text())["tests"]}


def test_xdist_gives_the_serial_answer_in_one_report(run, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    pytester.makepyfile(test_suite=SUITE)
    serial = run("--heapgate", "--heapgate-dir=serial", "--heapgate-dir-all", "--most-allocations=0")
    parallel = run("--heapgate", "--heapgate-dir=parallel", "--heapgate-dir-all", "--most-allocations=0", "-n", "2")
    for result in (serial, parallel):
        result.assert_outcomes(passed=7, failed=3)
    assert "[gw1]" in parallel.stdout.str() or "2 workers" in parallel.stdout.str()
    # One summary, listing every test, from the controller.
    out = parallel.stdout.str()
    assert out.count("heapgate: memory per test") == 1
    for nodeid in NATIVE_PEAKS:
        assert nodeid in out.split("heapgate: memory per test")[1]
    # One merged heapgate.json and JUnit file, no per-worker files; every capture lands.
    files = sorted(p.name for p in (pytester.path / "parallel").iterdir())
    assert not [f for f in files if re.match(r"heapgate-(junit-)?gw\d+", f)], files
    assert sorted(p.name for p in (pytester.path / "serial").iterdir()) == files
    assert len([f for f in files if f.endswith(".heapgate")]) == len(NATIVE_PEAKS)
    s, p = _tests(pytester.path / "serial" / "heapgate.json"), _tests(pytester.path / "parallel" / "heapgate.json")
    assert set(s) == set(p) == set(NATIVE_PEAKS)
    for nodeid, truth in NATIVE_PEAKS.items():
        # Native allocations are exact, so serial and parallel agree to the byte.
        assert s[nodeid]["peak_bytes"] == p[nodeid]["peak_bytes"] == truth, nodeid
        assert s[nodeid]["outcome"] == p[nodeid]["outcome"]
        assert s[nodeid]["memory_failed"] == p[nodeid]["memory_failed"]
        assert (pytester.path / "parallel" / p[nodeid]["artifacts"]["capture"]).is_file()
    session = json.loads((pytester.path / "parallel" / "heapgate.json").read_text())["session"]
    assert session["tracked"] == len(NATIVE_PEAKS) and session["memory_failures"] == 2
    junit = (pytester.path / "parallel" / "heapgate-junit.xml").read_text()
    assert junit.count("<testcase") == len(NATIVE_PEAKS)

    # heapgate merge: two jobs' reports into one, artifact paths still pointing at the files.
    merged = pytester.path / "merged" / "all.json"
    merged.parent.mkdir()
    code = heapgate_main(["merge", str(pytester.path / "serial" / "heapgate.json"), str(pytester.path / "parallel" / "heapgate.json"), "-o", str(merged)])
    assert code == 0
    data = json.loads(merged.read_text())
    assert data["schema"] == "heapgate-session" and data["session"]["tracked"] == 2 * len(NATIVE_PEAKS)
    assert data["session"]["memory_failures"] == 4
    for test in data["tests"]:
        assert (merged.parent / test["artifacts"]["capture"]).is_file()
    assert heapgate_main(["summary", str(merged)]) == 1
    assert heapgate_main(["merge", str(pytester.path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err


BASE = """
import os, pytest, hgtest

GROW = int(os.environ.get("HG_GROW", "1000000"))
LITTLE = int(os.environ.get("HG_LITTLE", "100000"))
SHRINK = int(os.environ.get("HG_SHRINK", "2000000"))

def test_grows():
    hgtest.malloc_free(GROW)

def test_grows_a_little():
    hgtest.malloc_free(LITTLE)

def test_shrinks():
    hgtest.malloc_free(SHRINK)

def test_steady():
    hgtest.malloc_free(500_000)
"""


def test_baseline_round_trip(run, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_base=BASE)
    saved = run("--heapgate-save=mem/baseline.json")
    saved.assert_outcomes(passed=4)
    baseline = json.loads((pytester.path / "mem" / "baseline.json").read_text())
    assert baseline["schema"] == "heapgate-baseline" and baseline["version"] == 1
    assert baseline["tests"]["test_base.py::test_grows"] == {"peak_bytes": 1_000_000, "leaked_bytes": 0}
    assert "heapgate: baseline of 4 tests written to" in saved.stdout.str()

    # +50% on test_grows fails; test_grows_a_little grows +30% but by less than the 64KiB floor.
    monkeypatch.setenv("HG_GROW", "1500000")
    monkeypatch.setenv("HG_LITTLE", "130000")
    monkeypatch.setenv("HG_SHRINK", "1000000")
    compared = run("--heapgate-compare=mem/baseline.json", "--heapgate-max-increase=10%", "-n", "2")
    compared.assert_outcomes(passed=3, failed=1)
    out = compared.stdout.str()
    assert "FAILED test_base.py::test_grows - Test's peak grew beyond the baseline" in out
    assert "baseline peak 976.6KiB (1000000 bytes), now 1.4MiB (1500000 bytes): +488.3KiB (+50.0%)" in out
    assert "tolerance +10% (increases under 64.0KiB never fail)" in out
    summary = out.split("heapgate: compared with the baseline")[1]
    assert "4 tests compared with baseline.json" in summary and "1 grew beyond it" in summary
    increases, decreases = summary.split("biggest decreases:")
    assert increases.index("test_base.py::test_grows\n") < increases.index("test_base.py::test_grows_a_little")
    assert "-50.0%  1.9MiB -> 976.6KiB  test_base.py::test_shrinks" in decreases
    # A higher tolerance (ini) lets it pass; a floor above the growth too.
    pytester.makeini("[pytest]\nheapgate_compare = mem/baseline.json\nheapgate_max_increase = 60\n")
    run().assert_outcomes(passed=4)
    run("--heapgate-min-increase=1MB", "--heapgate-max-increase=0").assert_outcomes(passed=4)


def test_fail_on_increase_uses_pytest_cache(pytester: pytest.Pytester, native_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(native_dir))
    pytester.makepyfile(
        test_inc="""
        import os, pytest, hgtest
        SIZE = int(os.environ.get("HG_SIZE", "1000000"))

        @pytest.mark.limit_memory("10MB")
        def test_marked():
            hgtest.malloc_free(SIZE)

        def test_unmarked():
            hgtest.malloc_free(SIZE)
        """
    )
    pytester.runpytest_subprocess("--fail-on-increase").assert_outcomes(passed=2)
    monkeypatch.setenv("HG_SIZE", "1000001")
    result = pytester.runpytest_subprocess("--heapgate-fail-on-increase", "--heapgate")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Test uses more memory than its previous run (--fail-on-increase)*",
                                 "*previous peak 976.6KiB (1000000 bytes), now 976.6KiB (1000001 bytes): +1B*"])
    assert "FAILED test_inc.py::test_marked" in result.stdout.str()
    # The failing run kept the old value; pytest-memray's ini key name works too.
    pytester.makeini("[pytest]\nfail-on-increase = true\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1, failed=1)
    monkeypatch.setenv("HG_SIZE", "900000")
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


ASYNC = """
import asyncio
import pytest, hgtest

@pytest.fixture(scope="session")
def session_data():
    return bytearray(3_000_000)

@pytest.fixture(scope="module")
def module_data():
    return bytearray(3_000_000)

@pytest.fixture(scope="class")
def class_data():
    return bytearray(3_000_000)

@pytest.fixture
def function_data():
    data = bytearray(3_000_000)
    yield data
    del data

@pytest.mark.asyncio
@pytest.mark.limit_memory("1MB")
async def test_asyncio_over():
    await asyncio.sleep(0)
    hgtest.malloc_free(3_000_001)

@pytest.mark.asyncio
@pytest.mark.limit_memory("4MB")
async def test_asyncio_under():
    await asyncio.sleep(0)
    hgtest.malloc_free(3_000_001)

@pytest.mark.anyio
@pytest.mark.limit_memory("1MB")
async def test_anyio_over(anyio_backend):
    hgtest.malloc_free(3_000_001)

@pytest.mark.anyio
@pytest.mark.limit_memory("4MB")
async def test_anyio_under(anyio_backend):
    hgtest.malloc_free(3_000_001)

class TestScopes:
    @pytest.mark.limit_memory("1MB")
    def test_fixtures(self, session_data, module_data, class_data, function_data):
        hgtest.malloc_free(100_000)
"""

ANYIO_BACKENDS = """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""


def _peak(out: str, name: str) -> int:
    m = re.search(rf"_{{3,}} {re.escape(name)} _{{3,}}\n.*?peak (\d+) bytes", out, re.S)
    assert m, (name, out)
    return int(m.group(1))


def test_async_class_and_fixture_tests(run, pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_asyncio")
    pytest.importorskip("anyio")
    pytest.importorskip("trio")
    pytester.makepyfile(test_async=ASYNC)
    pytester.makeconftest(ANYIO_BACKENDS)
    result = run("-v", "-p", "no:randomly")
    out = result.stdout.str()
    # Async tests are tracked and asserted on every backend; fixtures do not count.
    result.assert_outcomes(passed=4, failed=3)
    for name in ("test_asyncio_over", "test_anyio_over[asyncio]", "test_anyio_over[trio]"):
        assert f"::{name} FAILED" in out
        # The whole call window of an async test is charged: the event loop's own work is
        # small next to the test's 3,000,001 bytes.
        assert 3_000_001 <= _peak(out, name) <= 3_000_001 + 256 * 1024, name
    for name in ("test_asyncio_under", "test_anyio_under[asyncio]", "test_anyio_under[trio]", "TestScopes::test_fixtures"):
        assert f"::{name} PASSED" in out, name
    # With --heapgate-include-fixtures the fixtures set up for this test count: here all four
    # (the first test of its class, module and session), 4 x 3,000,000 bytes.
    included = run("-v", "--heapgate-include-fixtures", "-k", "test_fixtures")
    included.assert_outcomes(failed=1)
    peak = _peak(included.stdout.str(), "TestScopes.test_fixtures")
    assert 12_000_000 <= peak <= 12_000_000 + 512 * 1024, peak
    # A setup error with tracking started in setup leaves the session sound.
    pytester.makepyfile(
        test_setup_error="""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("no")

        @pytest.mark.limit_memory("1MB")
        def test_a(broken):
            pass

        @pytest.mark.limit_memory("1MB")
        def test_b():
            pass
        """
    )
    broken = run("--heapgate-include-fixtures", "test_setup_error.py")
    broken.assert_outcomes(passed=1, errors=1)
    assert "INTERNALERROR" not in broken.stdout.str()
