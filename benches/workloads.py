"""The benchmark's tests. alloc_bench.py copies this file as test_workloads.py into a temporary
directory, next to bench_conftest.py (as conftest.py) and the compiled cmalloc extension, and
runs pytest there once per mode and repetition.

Each workload records the wall time of its allocation loop alone (time.perf_counter around the
loop) as the user property "loop_s"; the conftest also records the call phase's
report.duration, which additionally covers the tracker's start and stop around the test."""

import time
from typing import Callable

import cmalloc

N = 1_000_000
ROWS = 200_000


def test_0_warmup(record_property: Callable[[str, object], None]) -> None:
    # First test of the session: a tracker's one-time setup (heapgate patches the GOTs of
    # every loaded object at its first tracked test) lands here, not in the workloads.
    t0 = time.perf_counter()
    for _ in range(1000):
        bytearray(64)
    cmalloc.malloc_free(1000, 64)
    record_property("loop_s", time.perf_counter() - t0)


def test_python_bytearray(record_property: Callable[[str, object], None]) -> None:
    t0 = time.perf_counter()
    for _ in range(N):
        bytearray(64)
    record_property("loop_s", time.perf_counter() - t0)


def test_c_malloc_free(record_property: Callable[[str, object], None]) -> None:
    t0 = time.perf_counter()
    cmalloc.malloc_free(N, 64)
    record_property("loop_s", time.perf_counter() - t0)


def test_mixed_dicts(record_property: Callable[[str, object], None]) -> None:
    t0 = time.perf_counter()
    rows = [{"id": i, "name": f"row-{i}", "score": i * 0.5} for i in range(ROWS)]
    assert len(rows) == ROWS
    del rows
    record_property("loop_s", time.perf_counter() - t0)


def test_python_bytearray_kept(record_property: Callable[[str, object], None]) -> None:
    # (a) with every bytearray kept alive until the end: the same allocations, but ~1,000,000
    # of them live at once. Shows how a tracker's cost depends on the size of the live set.
    t0 = time.perf_counter()
    kept = [bytearray(64) for _ in range(N)]
    assert len(kept) == N
    del kept
    record_property("loop_s", time.perf_counter() - t0)
