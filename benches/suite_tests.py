"""The realistic suite of suite_bench.py (copied as test_suite.py into a temporary directory,
next to bench_conftest.py as conftest.py and the compiled cmalloc extension).

Shapes a real test suite has and a per-event microbenchmark hides: large live sets, deep
Python stacks, threads, numpy, an import of a big package. Each test records the wall time of
its workload alone as the user property "loop_s"; the conftest adds pytest's call duration.
"""

import threading
import time
from typing import Callable, Optional

import cmalloc

C_BLOCKS = 2_097_152
THREAD_LISTS = 150_000


def test_00_warmup(record_property: Callable[[str, object], None]) -> None:
    # A tracker's one-time setup (heapgate patches every loaded object at its first tracked
    # test) lands here, not in the workloads.
    t0 = time.perf_counter()
    kept = [bytearray(64) for _ in range(1000)]
    cmalloc.malloc_hold(1000, 64)
    del kept
    record_property("loop_s", time.perf_counter() - t0)


def test_dicts_and_lists(record_property: Callable[[str, object], None]) -> None:
    # 600,000 small dicts and 600,000 small lists in six rounds of 100,000 each, each
    # round's containers live together.
    t0 = time.perf_counter()
    for _ in range(6):
        dicts = [{"id": i, "score": i} for i in range(100_000)]
        lists = [[i, i] for i in range(100_000)]
        assert len(dicts) == len(lists)
        del dicts, lists
    record_property("loop_s", time.perf_counter() - t0)


def test_bytearrays_kept(record_property: Callable[[str, object], None]) -> None:
    t0 = time.perf_counter()
    kept = [bytearray(64) for _ in range(1_000_000)]
    assert len(kept) == 1_000_000
    del kept
    record_property("loop_s", time.perf_counter() - t0)


def test_c_blocks_live(record_property: Callable[[str, object], None]) -> None:
    # 2,097,152 C mallocs of 64 bytes held live together, then freed.
    t0 = time.perf_counter()
    cmalloc.malloc_hold(C_BLOCKS, 64)
    record_property("loop_s", time.perf_counter() - t0)


def _leaf_allocations(depth: int) -> list[bytearray]:
    if depth:
        return _leaf_allocations(depth - 1)
    return [bytearray(32) for _ in range(200_000)]


def test_deep_recursion(record_property: Callable[[str, object], None]) -> None:
    # Every allocation is made 150 Python frames below the test.
    t0 = time.perf_counter()
    kept = _leaf_allocations(150)
    assert len(kept) == 200_000
    del kept
    record_property("loop_s", time.perf_counter() - t0)


def _make_lists(n: int, out: list[Optional[list[list[int]]]], index: int) -> None:
    out[index] = [[i] for i in range(n)]


def _lists_in_threads(threads: int, per_thread: int) -> None:
    out: list[Optional[list[list[int]]]] = [None] * threads
    workers = [threading.Thread(target=_make_lists, args=(per_thread, out, i)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sum(len(x or ()) for x in out) == threads * per_thread


def test_lists_one_thread(record_property: Callable[[str, object], None]) -> None:
    # The same 600,000 lists as the four-thread test, made by one started thread: the pair
    # gives the per-event cost of one thread against four.
    t0 = time.perf_counter()
    _lists_in_threads(1, 4 * THREAD_LISTS)
    record_property("loop_s", time.perf_counter() - t0)


def test_lists_four_threads(record_property: Callable[[str, object], None]) -> None:
    t0 = time.perf_counter()
    _lists_in_threads(4, THREAD_LISTS)
    record_property("loop_s", time.perf_counter() - t0)


def _fib(n: int) -> int:
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


def test_python_calls(record_property: Callable[[str, object], None]) -> None:
    # Plain Python work, as most of a real suite's time is: 392,835 calls of a small
    # recursive function that allocates only the ints above 256 it returns. A tracker that
    # follows Python calls (a profile function) pays per call; one that reads the stack at
    # each allocation pays per allocation.
    t0 = time.perf_counter()
    assert _fib(26) == 121393
    record_property("loop_s", time.perf_counter() - t0)


def test_big_import(record_property: Callable[[str, object], None]) -> None:
    # numpy (dozens of extension objects loaded) and a slice of the standard library.
    t0 = time.perf_counter()
    import asyncio  # noqa: F401
    import decimal  # noqa: F401
    import email.mime.multipart  # noqa: F401
    import http.client  # noqa: F401
    import unittest.mock  # noqa: F401
    import xml.etree.ElementTree  # noqa: F401

    import numpy  # noqa: F401

    record_property("loop_s", time.perf_counter() - t0)


def test_numpy_churn(record_property: Callable[[str, object], None]) -> None:
    import numpy as np

    t0 = time.perf_counter()
    total = 0.0
    for i in range(20_000):
        a = np.arange(64, dtype=np.float64)
        b = a * 2.0 + i
        total += float(b.sum())
    big = [np.ones((256, 256)) for _ in range(64)]
    total += sum(float(x[0, 0]) for x in big)
    del big
    assert total > 0
    record_property("loop_s", time.perf_counter() - t0)
