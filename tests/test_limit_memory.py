"""limit_memory end to end: exact native peaks, Python objects, threads, fork, dlopen."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import peaks

MIB = 1024 * 1024

# (call, ground-truth peak in bytes, allocator the bytes come through)
NATIVE_CASES = {
    "malloc": ("hgtest.malloc_free(3_000_001)", 3_000_001, "malloc"),
    "calloc": ("hgtest.calloc_free(1000, 2049)", 2_049_000, "calloc"),
    "realloc": ("hgtest.realloc_free(1000, 5_000_000)", 5_000_000, "realloc"),
    "posix_memalign": ("hgtest.posix_memalign_free(64, 1_500_000)", 1_500_000, "posix_memalign"),
    "aligned_alloc": ("hgtest.aligned_alloc_free(4096, 2 * 4096 * 100)", 819_200, "aligned_alloc"),
    "memalign": ("hgtest.memalign_free(256, 777_777)", 777_777, "memalign"),
    "valloc": ("hgtest.valloc_free(123_456)", 123_456, "valloc"),
    "mmap": ("hgtest.mmap_munmap(8_388_608)", 8_388_608, "mmap"),
    "nogil": ("hgtest.nogil_malloc_free(4_000_000)", 4_000_000, "malloc"),
    "threads": ("hgtest.threads_malloc_free(4, 1_000_000)", 4_000_000, "malloc"),
}


@pytest.mark.parametrize("case", sorted(NATIVE_CASES))
def test_native_peak_is_exact_to_the_byte(run, pytester: pytest.Pytester, case: str) -> None:
    call, truth, allocator = NATIVE_CASES[case]
    pytester.makepyfile(
        test_native=f"""
        import pytest, hgtest
        MIB = 1024 * 1024

        @pytest.mark.limit_memory({truth - 1})
        def test_just_under():
            {call}

        @pytest.mark.limit_memory({truth})
        def test_exact():
            {call}
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    assert peaks(result) == {"test_just_under": truth}
    out = result.stdout.str()
    assert f"({truth} bytes) in" in out
    first_frame = "(no Python frames: a native thread started by the test; --native shows its stack)" if case == "threads" else "test_just_under at test_native.py:6"
    assert re.search(rf"\({truth} bytes\) in \d+ allocations? through {allocator}\n\s+{re.escape(first_frame)}", out), out


def test_python_objects_are_counted_at_their_requested_size(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_py="""
        import pytest

        @pytest.mark.limit_memory("1B")
        def test_bytearray():
            data = bytearray(10_000_000)
            del data

        @pytest.mark.limit_memory("1B")
        def test_many_small():
            keep = [bytearray(64) for _ in range(10_000)]
        """
    )
    result = run()
    result.assert_outcomes(failed=2)
    found = peaks(result)
    # bytearray(n) asks for n + 1 bytes (NUL) plus its object (~57 bytes on 64-bit CPython).
    assert 10_000_001 <= found["test_bytearray"] <= 10_000_001 + 1024
    # 10,000 objects of 64 payload bytes + header, plus the list's pointer array.
    assert 10_000 * 64 <= found["test_many_small"] <= 10_000 * (64 + 64) + 100_000
    out = result.stdout.str()
    assert "through PyObject_Malloc" in out or "through PyMem_Malloc" in out
    assert "test_bytearray at test_py.py:5" in out


def test_failure_text_names_the_limit_peak_and_stack(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_text="""
        import pytest, hgtest

        def helper(n):
            hgtest.malloc_free(n)

        @pytest.mark.limit_memory("5 MB")
        def test_big():
            helper(10 * 1024 * 1024)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    # Before 3.11 every Python call allocates a frame object: helper()'s is live at the peak.
    peak_line = (
        "  limit 5242880 bytes, peak 10485760 bytes in 1 live allocation"
        if sys.version_info >= (3, 11)
        else "  limit 5242880 bytes, peak 10486??? bytes in 2 live allocations"
    )
    result.stdout.fnmatch_lines(
        [
            "Test was limited to 5.0MiB but allocated 10.0MiB at its peak",
            peak_line,
            "  charged: *",
            "Top locations at the peak (allocating frame first):",
            "  #1 10.0MiB (10485760 bytes) in 1 allocation through malloc",
            "      helper at test_text.py:4",
            "      test_big at test_text.py:8",
        ]
    )
    # pytest's own frames (runner, pluggy) never appear in the stack.
    failure = result.stdout.str().split("FAILURES")[1].split("heapgate: memory per test")[0]
    assert "pluggy" not in failure
    assert "_pytest" not in failure


def test_failure_text_is_the_junit_failure_body(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_junit="""
        import pytest, hgtest

        @pytest.mark.limit_memory("1MB")
        def test_big():
            hgtest.malloc_free(2 * 1024 * 1024)
        """
    )
    result = run("--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    xml = (pytester.path / "junit.xml").read_text()
    assert "<failure message=\"Test was limited to 1.0MiB but allocated 2.0MiB at its peak" in xml
    assert "test_big at test_junit.py:5</failure>" in xml


def test_current_thread_only_excludes_threads_the_test_started(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_threads="""
        import pytest, hgtest

        @pytest.mark.limit_memory("1B", current_thread_only=True)
        def test_own_thread_only():
            hgtest.threads_malloc_free(4, 1_000_000)
            hgtest.malloc_free(50_000)

        @pytest.mark.limit_memory("1B")
        def test_spawned_threads_count():
            hgtest.threads_malloc_free(4, 1_000_000)
            hgtest.malloc_free(50_000)
        """
    )
    result = run()
    result.assert_outcomes(failed=2)
    assert peaks(result) == {"test_own_thread_only": 50_000, "test_spawned_threads_count": 4_000_000}
    assert "(no Python frames: a native thread started by the test; --native shows its stack)" in result.stdout.str()


def test_python_threads_started_by_the_test_are_charged(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_pythreads="""
        import threading
        import pytest, hgtest

        @pytest.mark.limit_memory("1B")
        def test_worker():
            t = threading.Thread(target=hgtest.malloc_free, args=(3_000_000,))
            t.start()
            t.join()
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    assert peaks(result)["test_worker"] >= 3_000_000
    # co_qualname (Thread.run) exists from 3.11; before, frames show co_name (run).
    assert re.search(r"\(3000000 bytes\) in 1 allocation through malloc\n\s+(Thread\.)?run at .*threading.py:\d+", result.stdout.str())


def test_fork_inside_a_tracked_test_does_not_deadlock(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fork="""
        import multiprocessing, os
        import pytest, hgtest

        def square(x):
            hgtest.malloc_free(100_000)
            return x * x

        @pytest.mark.limit_memory("100MB")
        def test_os_fork():
            pid = os.fork()
            if pid == 0:
                hgtest.malloc_free(1_000_000)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert status == 0
            hgtest.malloc_free(10)

        @pytest.mark.limit_memory("100MB")
        def test_multiprocessing_fork():
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(2) as pool:
                assert pool.map(square, range(20)) == [x * x for x in range(20)]
        """
    )
    result = run(timeout=60)
    result.assert_outcomes(passed=2)


def test_a_library_dlopened_during_the_test_is_tracked(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_dlopen="""
        import ctypes, os
        import pytest

        @pytest.mark.limit_memory("1B")
        def test_load_and_allocate():
            lib = ctypes.CDLL(os.environ["HGDL_PATH"])
            lib.hgdl_malloc_free(ctypes.c_size_t(6_000_000))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    assert re.search(r"\(6000000 bytes\) in 1 allocation through malloc\n\s+test_load_and_allocate at test_dlopen.py:7", result.stdout.str())


@pytest.mark.parametrize(
    "marker, quoted",
    [
        ('limit_memory("abc")', "'abc'"),
        ('limit_memory("-5MB")', "'-5MB'"),
        ('limit_memory("12 parsecs")', "'12 parsecs'"),
        ("limit_memory(-1)", "-1"),
        ("limit_memory(1.5)", "1.5"),
        ('limit_memory("1MB", current_thread_onlyy=True)', "current_thread_onlyy"),
        ("limit_memory()", "limit"),
    ],
)
def test_a_bad_limit_errors_that_test_only(run, pytester: pytest.Pytester, marker: str, quoted: str) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.{marker}
        def test_bad():
            pass

        def test_other():
            pass

        @pytest.mark.limit_memory("1 GiB")
        def test_good():
            pass
        """
    )
    result = run()
    result.assert_outcomes(passed=2, errors=1)
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    line = next(l for l in out.splitlines() if l.startswith("heapgate: @pytest.mark.limit_memory"))
    assert quoted in line
    if "limit_memory(\"" in marker and "=" not in marker:
        assert "KiB, MiB, GiB, TiB" in line


def test_two_limit_markers_on_one_test_error(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_two="""
        import pytest

        @pytest.mark.limit_memory("1MB")
        @pytest.mark.limit_memory("2MB")
        def test_twice():
            pass

        pytestmark = pytest.mark.limit_memory("10MB")

        @pytest.mark.limit_memory("20MB")
        def test_overrides_module_marker():
            pass
        """
    )
    result = run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*2 @pytest.mark.limit_memory markers on 'test_two.py::test_twice'*"])


def test_summary_lists_tracked_tests_by_peak(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_summary="""
        import pytest, hgtest

        @pytest.mark.limit_memory("100MB")
        def test_small():
            hgtest.malloc_free(1024)

        @pytest.mark.limit_memory("100MB")
        def test_large():
            hgtest.malloc_free(2 * 1024 * 1024)
        """
    )
    result = run("--most-allocations=1")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*heapgate: memory per test*", "*2.0MiB*100.0MiB  test_summary.py::test_large", "(1 more tracked tests*"])
    hidden = run("--hide-heapgate-summary")
    assert "heapgate: memory per test" not in hidden.stdout.str()
