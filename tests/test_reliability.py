"""Do no harm (issue 10): a tracked test behaves as an untracked one and its numbers stay exact
under threads, fork and child processes, a crashing xdist worker, a replaced Python allocator,
and an interpreter run with PYTHONMALLOC or tracemalloc; untracked sessions install nothing.
docs/reliability.md lists these scenarios and the guarantees each test keeps true."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import peaks

# An inner conftest that dumps each tracked test's sites (heapgate's own Report objects) to
# <test name>.sites.json, so a test can check every allocator's totals to the byte.
SITES_CONFTEST = """
import json, pytest
from heapgate.plugin import RESULT

@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    result = item.stash.get(RESULT, None)
    if result is None:
        return
    r = result.report
    sites = [
        {
            "allocator": str(s.allocator),
            "bytes_at_peak": s.bytes_at_peak,
            "count_at_peak": s.count_at_peak,
            "total_bytes": s.total_bytes,
            "total_count": s.total_count,
            "line": s.stack[0].lineno if s.stack else 0,
            "python": any(str(f.kind) == "python" for f in s.stack),
        }
        for s in r.sites
    ]
    with open(item.name + ".sites.json", "w") as f:
        json.dump({"peak_bytes": r.peak_bytes, "total_bytes": r.total_bytes, "total_count": r.total_count,
                   "problem": r.interpreter_problem, "sites": sites}, f)
"""


def sites(pytester: pytest.Pytester, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / f"{name}.sites.json").read_text())
    return data


def by_allocator(data: dict[str, Any], allocator: str, key: str) -> int:
    return sum(int(s[key]) for s in data["sites"] if s["allocator"] == allocator)


# ---- threads ---------------------------------------------------------------------------------

SIZE = 1_000_000
ITERATIONS = 200


def churn_truth(threads: int) -> dict[str, int]:
    """What hgstress's churn_body does on `threads` threads, by allocator (see hgstress.c)."""
    sizes = [SIZE // 2 + i % 97 for i in range(ITERATIONS)]
    return {
        "malloc_bytes": threads * (sum(sizes[0::2]) + SIZE),
        "malloc_count": threads * (len(sizes[0::2]) + 1),
        "calloc_bytes": threads * sum(sizes[1::2]),
        "calloc_count": threads * len(sizes[1::2]),
        "peak": threads * SIZE,
    }


def test_eight_python_and_eight_native_threads_are_counted_to_the_byte(run, pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SITES_CONFTEST)
    pytester.makepyfile(
        test_threads=f"""
        import threading
        import pytest, hgstress

        def python_thread():
            for _ in range(50):
                junk = bytearray(4096)  # Python objects too, between the native work
                del junk
            hgstress.worker({SIZE}, {ITERATIONS})

        @pytest.mark.limit_memory("1GB")
        def test_sixteen_threads():
            hgstress.stress_begin(16)
            threads = [threading.Thread(target=python_thread) for _ in range(8)]
            for t in threads:
                t.start()
            hgstress.native_workers(8, {SIZE}, {ITERATIONS})
            for t in threads:
                t.join()
        """
    )
    result = run(timeout=60)
    result.assert_outcomes(passed=1)
    data = sites(pytester, "test_sixteen_threads")
    truth = churn_truth(16)
    assert by_allocator(data, "malloc", "total_bytes") == truth["malloc_bytes"]
    assert by_allocator(data, "malloc", "total_count") == truth["malloc_count"]
    assert by_allocator(data, "calloc", "total_bytes") == truth["calloc_bytes"]
    assert by_allocator(data, "calloc", "total_count") == truth["calloc_count"]
    # At the peak every thread holds its block, and no churn block is live.
    assert by_allocator(data, "malloc", "bytes_at_peak") == truth["peak"]
    assert by_allocator(data, "calloc", "bytes_at_peak") == 0
    # The peak is those blocks plus what the Python threads themselves hold (thread objects,
    # thread states), and exactly the sum of its sites.
    assert data["peak_bytes"] == sum(s["bytes_at_peak"] for s in data["sites"])
    assert truth["peak"] <= data["peak_bytes"] < truth["peak"] + 256 * 1024
    # The native threads' blocks have no Python frames; the Python threads' have theirs.
    native = [s for s in data["sites"] if s["allocator"] == "malloc" and not s["python"]]
    assert sum(s["bytes_at_peak"] for s in native) == 8 * SIZE


# ---- fork and processes ----------------------------------------------------------------------

PARENT = 7_777_777  # allocated first: the parent's peak, to the byte
CHILD = 30_000_000  # allocated by every child: never the parent's


def test_os_fork_child_is_untracked_and_the_parent_exact(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fork=f"""
        import os, threading
        import pytest, hgtest
        from heapgate import _native

        @pytest.mark.limit_memory({PARENT - 1})
        def test_parent():
            hgtest.malloc_free({PARENT})
            pid = os.fork()
            if pid == 0:
                code = 3 if _native.is_active() else 0
                hgtest.malloc_free({CHILD})
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "the child was tracked"

        @pytest.mark.limit_memory("100MB")
        def test_fork_while_threads_allocate():
            stop = threading.Event()
            def churn():
                while not stop.is_set():
                    hgtest.malloc_free(4096)
                    hgtest.threads_malloc_free(2, 1000)
            threads = [threading.Thread(target=churn) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                for _ in range(30):
                    pid = os.fork()
                    if pid == 0:
                        hgtest.malloc_free(1000)
                        os._exit(0)
                    _, status = os.waitpid(pid, 0)
                    assert status == 0
            finally:
                stop.set()
                for t in threads:
                    t.join()
        """
    )
    result = run("--heapgate-dir=out", "--heapgate-dir-all", timeout=60)
    result.assert_outcomes(passed=1, failed=1)
    assert peaks(result) == {"test_parent": PARENT}


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_children_neither_count_nor_report(run, pytester: pytest.Pytester, method: str) -> None:
    pytester.makepyfile(
        test_mp=f"""
        import multiprocessing
        import pytest, hgtest
        from heapgate import _native

        def child_work(x):
            hgtest.malloc_free({CHILD})
            return (x, _native.is_active(), _native.hooks_installed())

        @pytest.mark.limit_memory({PARENT - 1})
        def test_pool():
            hgtest.malloc_free({PARENT})
            ctx = multiprocessing.get_context("{method}")
            with ctx.Pool(2) as pool:
                states = pool.map(child_work, range(6))
            assert [s[0] for s in states] == list(range(6))
            assert not any(s[1] for s in states), "a child was tracked"
            # Fork children inherit the patched GOTs (untracked: one branch per call); children
            # that exec a fresh interpreter have no hook at all.
            assert all(s[2] for s in states) == ("{method}" == "fork")
        """
    )
    result = run("--heapgate-dir=out", "--heapgate-dir-all", timeout=90)
    result.assert_outcomes(failed=1)
    assert peaks(result) == {"test_pool": PARENT}
    report = json.loads((pytester.path / "out" / "heapgate.json").read_text())
    assert [(t["nodeid"], t["peak_bytes"]) for t in report["tests"]] == [("test_mp.py::test_pool", PARENT)]
    # Only the parent's files: no temporary leftovers, no children's captures.
    assert sorted(p.suffix for p in (pytester.path / "out").iterdir()) == [".heapgate", ".json", ".svg", ".xml"]


def test_a_subprocess_that_execs_python_runs_no_hook(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_sub=f"""
        import subprocess, sys
        import pytest, hgtest

        CHILD = '''
        import sys, hgtest
        hgtest.malloc_free({CHILD})
        maps = open("/proc/self/maps").read()
        print("heapgate" in maps, sorted(m for m in sys.modules if "heapgate" in m))
        '''

        @pytest.mark.limit_memory({PARENT - 1})
        def test_exec():
            hgtest.malloc_free({PARENT})
            done = subprocess.run([sys.executable, "-c", CHILD.replace("\\n        ", "\\n")], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            assert done.stdout == "False []\\n", done.stdout
            assert done.stderr == ""
        """
    )
    result = run("--heapgate-dir=out", timeout=60)
    result.assert_outcomes(failed=1)
    assert peaks(result) == {"test_exec": PARENT}


def test_a_forked_child_that_returns_into_pytest_does_not_report(run, pytester: pytest.Pytester) -> None:
    # Regression: the child stopped a tracking it did not have (TrackingError), then ran the
    # rest of the session tracked and wrote its own captures, heapgate.json and summary into
    # the parent's --heapgate-dir.
    pytester.makepyfile(
        test_fall=f"""
        import os
        import pytest, hgtest

        @pytest.mark.limit_memory("100MB")
        def test_forks():
            hgtest.malloc_free(1_000_000)
            pid = os.fork()
            if pid == 0:
                hgtest.malloc_free({CHILD})
                return  # the child goes on with the session
            os.waitpid(pid, 0)

        @pytest.mark.limit_memory("100MB")
        def test_after():
            hgtest.malloc_free(2_000_000)

        @pytest.mark.native_leaks("1GB")
        @pytest.mark.limit_memory("100MB", repeat=2)
        def test_forks_under_leak_scan_and_repeat():
            hgtest.malloc_free(3_000_000)
            if os.fork() == 0:
                return
            os.wait()
        """
    )
    result = run("--heapgate-dir=out", "--heapgate-dir-all", timeout=60)
    out = result.stdout.str()
    assert "TrackingError" not in out
    assert out.count("heapgate: memory per test") == 1
    assert out.count("heapgate: heapgate.json") == 1
    report = json.loads((pytester.path / "out" / "heapgate.json").read_text())
    assert {t["nodeid"]: t["peak_bytes"] for t in report["tests"]} == {
        "test_fall.py::test_forks": 1_000_000,
        "test_fall.py::test_after": 2_000_000,
        "test_fall.py::test_forks_under_leak_scan_and_repeat": 3_000_000,
    }


# ---- crash isolation -------------------------------------------------------------------------

CRASH_SUITE = """
import pytest, hgtest, hgstress

@pytest.mark.parametrize("n", [1_000_001, 1_000_002, 1_000_003, 1_000_004])
@pytest.mark.limit_memory("2MB")
def test_before(n):
    hgtest.malloc_free(n)

@pytest.mark.limit_memory("2MB")
def test_crash():
    hgstress.segfault()

@pytest.mark.parametrize("n", [3_000_001, 3_000_002, 3_000_003, 3_000_004])
@pytest.mark.limit_memory("2MB")
def test_after(n):
    hgtest.malloc_free(n)  # over the limit: still gated after the crash
"""


def test_a_segfaulting_test_under_xdist_loses_no_other_result(run, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist is in the test extra")
    from heapgate import _native

    monkeypatch.setenv("PYTEST_ADDOPTS", "")  # this test wants xdist
    pytester.makepyfile(test_crash=CRASH_SUITE)
    result = run("-n", "2", "--heapgate-dir=out", "--heapgate-dir-all", timeout=120)
    result.assert_outcomes(passed=4, failed=5)
    out = result.stdout.str()
    assert "crashed while running 'test_crash.py::test_crash'" in out
    survivors = {f"test_crash.py::test_before[{n}]": n for n in range(1_000_001, 1_000_005)}
    survivors.update({f"test_crash.py::test_after[{n}]": n for n in range(3_000_001, 3_000_005)})
    directory = pytester.path / "out"
    report = json.loads((directory / "heapgate.json").read_text())
    tests = {t["nodeid"]: t for t in report["tests"]}
    assert {k: t["peak_bytes"] for k, t in tests.items()} == survivors
    assert sorted(k for k, t in tests.items() if t["memory_failed"]) == sorted(k for k in survivors if "after" in k)
    junit = (directory / "heapgate-junit.xml").read_text()
    assert junit.count("<testcase") == len(survivors)
    # Every capture written before or after the crash is whole.
    for nodeid, test in tests.items():
        record = _native.Record.read(str(directory / test["artifacts"]["capture"]))
        assert (record.nodeid, record.peak_bytes) == (nodeid, survivors[nodeid])
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_the_previous_reports_whole(pytester: pytest.Pytester, native_dir: Path) -> None:
    # Regression: heapgate.json and captures were written in place, so a write that failed
    # half way (full disk, a crash) left a truncated file behind. Here a file-size limit makes
    # the second session's writes fail.
    from heapgate import _native

    env = dict(os.environ, PYTHONPATH=str(native_dir), PYTEST_ADDOPTS="-p no:xdist -p no:cacheprovider")

    def suite(n: int) -> str:
        return "import pytest, hgtest\n" + "".join(
            f"@pytest.mark.limit_memory('1MB')\ndef test_{i}():\n    hgtest.malloc_free({2_000_000 + i})\n" for i in range(n)
        )

    (pytester.path / "test_w.py").write_text(suite(2))
    cmd = [sys.executable, "-m", "pytest", "--heapgate-dir=out", "--heapgate-dir-all", "test_w.py"]
    first = subprocess.run(cmd, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 1, first.stdout + first.stderr
    directory = pytester.path / "out"
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    limit = len(before["heapgate.json"]) // 2

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    (pytester.path / "test_w.py").write_text(suite(12))  # every report grows
    second = subprocess.run(cmd, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=60, preexec_fn=small_files)
    assert "heapgate: cannot write the session report" in second.stdout, second.stdout + second.stderr
    after = {p.name: p for p in directory.iterdir()}
    assert not [name for name in after if name.endswith(".tmp")], sorted(after)
    assert after["heapgate.json"].read_bytes() == before["heapgate.json"]
    assert after["heapgate-junit.xml"].read_bytes() == before["heapgate-junit.xml"]
    for name, path in after.items():
        if name.endswith(".heapgate"):
            _native.Record.read(str(path))  # whole: the old file or the new one


# ---- interpreter state -----------------------------------------------------------------------

PYMEM_SUITE = """
import tracemalloc
import pytest, hgtest, hgstress

@pytest.mark.limit_memory("100MB")
def test_wrapped_by_an_extension():
    hgstress.wrap_pymem()
    hgstress.pymem_malloc_free(6_000_001)
    calls = hgstress.unwrap_pymem()
    assert calls >= 1
    hgstress.pymem_malloc_free(5_000_001)

@pytest.mark.limit_memory("100MB")
def test_tracemalloc_inside():
    tracemalloc.start()
    hgstress.pymem_malloc_free(4_000_001)
    tracemalloc.stop()

@pytest.mark.limit_memory("100MB")
def test_native_and_python():
    hgtest.malloc_free(3_000_001)
    hgstress.pymem_malloc_free(2_000_001)
    data = bytearray(1_000_000)
    del data
"""



def line_of(source: str, text: str) -> int:
    """The line of `text` in a file pytester writes from `source` (leading newline dropped)."""
    return next(n for n, line in enumerate(source.strip("\n").splitlines(), 1) if text in line)


# Each test's exact sites: (allocator, line of the allocating frame) -> total bytes.
PYMEM_TRUTH = {
    "test_wrapped_by_an_extension": {
        ("PyMem_Malloc", line_of(PYMEM_SUITE, "6_000_001")): 6_000_001,
        ("PyMem_Malloc", line_of(PYMEM_SUITE, "5_000_001")): 5_000_001,
    },
    "test_tracemalloc_inside": {("PyMem_Malloc", line_of(PYMEM_SUITE, "4_000_001")): 4_000_001},
    "test_native_and_python": {
        ("malloc", line_of(PYMEM_SUITE, "3_000_001")): 3_000_001,
        ("PyMem_Malloc", line_of(PYMEM_SUITE, "2_000_001")): 2_000_001,
    },
}


@pytest.mark.parametrize("pythonmalloc", ["default", "malloc", "debug", "pymalloc_debug"])
def test_python_allocator_variants_keep_exact_counts(run, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pythonmalloc: str) -> None:
    if pythonmalloc != "default":
        monkeypatch.setenv("PYTHONMALLOC", pythonmalloc)
    pytester.makeconftest(SITES_CONFTEST)
    pytester.makepyfile(test_pymem=PYMEM_SUITE)
    result = run(timeout=60)
    result.assert_outcomes(passed=3)
    for name, truth in PYMEM_TRUTH.items():
        data = sites(pytester, name)
        assert data["problem"] is None
        found = {(s["allocator"], s["line"]): s["total_bytes"] for s in data["sites"]}
        for key, nbytes in truth.items():
            assert found.get(key) == nbytes, (name, key, found)
    # The bytearray: its buffer (n + 1) and its object, through CPython's object allocator.
    bytearray_site = [s for s in sites(pytester, "test_native_and_python")["sites"] if s["line"] == line_of(PYMEM_SUITE, "bytearray(")]
    assert 1_000_001 <= sum(s["total_bytes"] for s in bytearray_site) <= 1_000_001 + 128


def test_an_allocator_restored_under_heapgate_fails_the_test_clearly(run, pytester: pytest.Pytester) -> None:
    # Regression: an extension that sets back an allocator it saved before heapgate wrapped
    # the domain took heapgate out of PyMem_Malloc: small Python objects went uncounted and
    # large ones were reported "through PyMem_RawMalloc", silently.
    pytester.makeconftest(SITES_CONFTEST)
    pytester.makepyfile(
        test_restore="""
        import pytest, hgstress

        def test_untracked_saves():
            hgstress.save_pymem()

        @pytest.mark.limit_memory("100MB")
        def test_restores_it():
            hgstress.restore_saved_pymem()
            hgstress.pymem_malloc_free(4_000_001)

        @pytest.mark.limit_memory("100MB")
        def test_next_is_exact_again():
            hgstress.pymem_malloc_free(3_000_001)
        """
    )
    result = run(timeout=60)
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "heapgate cannot vouch for this test's numbers" in out
    assert "MEM (PyMem_Malloc) domain no longer goes through heapgate's wrapper" in out
    assert "FAILED test_restore.py::test_restores_it" in out
    data = sites(pytester, "test_next_is_exact_again")
    assert data["problem"] is None
    assert {(s["allocator"], s["total_bytes"]) for s in data["sites"]} == {("PyMem_Malloc", 3_000_001)}


def test_tracemalloc_stop_under_x_tracemalloc_fails_clearly_then_recovers(run, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: with -X tracemalloc, heapgate wraps tracemalloc's hooks; tracemalloc.stop()
    # restores the allocators it saved at startup and so took heapgate out for the rest of
    # the session (later tests' Python memory reported "through malloc", small objects lost).
    monkeypatch.setenv("PYTHONTRACEMALLOC", "1")
    pytester.makeconftest(SITES_CONFTEST)
    pytester.makepyfile(
        test_tm="""
        import tracemalloc
        import pytest, hgstress

        @pytest.mark.limit_memory("100MB")
        def test_stops_tracemalloc():
            assert tracemalloc.is_tracing()
            tracemalloc.stop()

        @pytest.mark.limit_memory("100MB")
        def test_next():
            hgstress.pymem_malloc_free(3_000_001)
        """
    )
    result = run(timeout=60)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "tracemalloc.stop()" in out and "FAILED test_tm.py::test_stops_tracemalloc" in out
    found = {(s["allocator"], s["total_bytes"]) for s in sites(pytester, "test_next")["sites"]}
    assert ("PyMem_Malloc", 3_000_001) in found, found


# ---- untracked cost --------------------------------------------------------------------------


def test_an_untracked_session_installs_no_hook(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_untracked="""
        import pytest, hgstress
        from heapgate import _native

        def test_plain():
            assert not _native.hooks_installed()
            # This extension's GOT entry for malloc still points into the C library, and
            # PyMem_Malloc is CPython's own.
            assert "libc" in hgstress.got_malloc_owner()
            assert "_native" not in hgstress.pymem_malloc_owner()

        def test_plain_again():
            test_plain()
        """
    )
    result = run()
    result.assert_outcomes(passed=2)
    # The same probes see the hooks once a test is tracked (so the checks above can fail).
    pytester.makepyfile(
        test_tracked="""
        import pytest, hgstress
        from heapgate import _native

        @pytest.mark.limit_memory("1GB")
        def test_tracked():
            assert _native.hooks_installed()
            assert "heapgate/_native" in hgstress.got_malloc_owner()
            assert "heapgate/_native" in hgstress.pymem_malloc_owner()
        """
    )
    result = run("test_tracked.py")
    result.assert_outcomes(passed=1)
