"""The result model as Python sees it (`heapgate._native`): reports, sites, allocators, frame
kinds and leak kinds are typed views of the one capture the tracker exported, and a report taken
with `checkpoint()` matches the one `stop()` returns. Runs in a fresh pytest process."""

from __future__ import annotations

from typing import Callable

import pytest

from heapgate._native import Allocator, FrameKind, ThreadMode

MODEL_TESTS = '''
import gc
import pytest
from heapgate import _native
from heapgate._native import Allocator, FrameKind, LeakKinds

def tracked(mode="current_thread", native=False):
    keep = []
    gc.collect()
    _native.start([], None, _native.ThreadMode.from_name(mode), native)
    keep.append(bytearray(100_000))
    keep.append(bytearray(200_000))
    return keep

def test_checkpoint_and_stop_agree_site_by_site():
    keep = tracked()
    early = _native.checkpoint()
    report = _native.stop()
    # The checkpoint's own Report object is the only allocation between the two.
    assert 0 < report.peak_bytes - early.peak_bytes < 1_000 and early.peak_bytes >= 300_000
    rows = lambda r: [(str(s.allocator), s.bytes_at_peak, s.leaked_bytes, s.total_count,
                       [(str(f.kind), f.function, f.lineno) for f in s.stack])
                      for s in r.sites if s.bytes_at_peak >= 100_000]
    assert len(rows(report)) == 2 and rows(report) == rows(early)
    top = report.sites[0]
    assert top.bytes_at_peak >= 200_000 and top.leaked_bytes == top.bytes_at_peak
    assert isinstance(top.allocator, Allocator) and top.allocator.is_python
    assert top.allocator == Allocator.from_name(str(top.allocator))
    assert top.stack[0].kind == FrameKind.PYTHON and str(top.stack[0].kind) == "python"
    assert top.stack[0].function == "tracked"
    assert report.sites is report.sites, "the Site objects are made once"
    del keep

def test_leak_kinds_are_typed_and_lost_is_their_sum():
    import hgleak
    keep = tracked(native=True)
    hgleak.leak_malloc(4096)
    hgleak.fill_cache(8192)
    totals = _native.scan_leaks()
    report = _native.stop()
    assert isinstance(totals, LeakKinds)
    # Definitely or possibly lost: a stale word may point inside the block (the scan is conservative).
    assert totals.lost.bytes >= 4096 and totals.still_reachable.bytes >= 8192
    lost = totals.definitely_lost.bytes + totals.indirectly_lost.bytes + totals.possibly_lost.bytes
    assert totals.lost.bytes == lost
    kinds = report.leak_kinds
    assert kinds is not None
    for name in ("definitely_lost", "indirectly_lost", "possibly_lost", "still_reachable"):
        assert getattr(kinds, name).bytes == getattr(totals, name).bytes
        per_site = sum(getattr(s.leak_kinds, name).bytes for s in report.sites if s.leak_kinds)
        assert per_site == getattr(totals, name).bytes, name
    del keep

def test_a_mode_is_a_thread_mode_not_a_string():
    with pytest.raises(TypeError):
        _native.start([], None, "current_thread")
    assert not _native.is_active()
'''


def test_the_result_model_from_python(run: Callable[..., pytest.RunResult], pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_model=MODEL_TESTS)
    result = run("-q")
    result.assert_outcomes(passed=3)


def test_allocator_members_names_and_bad_names() -> None:
    assert Allocator.all() == [
        Allocator.MALLOC, Allocator.CALLOC, Allocator.REALLOC, Allocator.REALLOCARRAY,
        Allocator.POSIX_MEMALIGN, Allocator.ALIGNED_ALLOC, Allocator.MEMALIGN, Allocator.VALLOC,
        Allocator.PVALLOC, Allocator.MMAP, Allocator.PY_RAW, Allocator.PY_MEM, Allocator.PY_OBJ,
    ]
    assert [str(a) for a in Allocator.all()][:2] == ["malloc", "calloc"]
    assert Allocator.PY_OBJ.name == str(Allocator.PY_OBJ) == "PyObject_Malloc"
    assert [a for a in Allocator.all() if a.is_python] == [Allocator.PY_RAW, Allocator.PY_MEM, Allocator.PY_OBJ]
    for a in Allocator.all():
        assert Allocator.from_name(str(a)) == a and hash(Allocator.from_name(a.name)) == hash(a)
    assert len(set(Allocator.all())) == 13
    with pytest.raises(ValueError, match='unknown allocator "malloc2" \\(expected one of: malloc, calloc, '):
        Allocator.from_name("malloc2")


def test_thread_mode_members_names_and_bad_names() -> None:
    assert ThreadMode.all() == [ThreadMode.CURRENT_THREAD, ThreadMode.SPAWNED, ThreadMode.ALL]
    assert [str(m) for m in ThreadMode.all()] == ["current_thread", "spawned", "all"]
    for m in ThreadMode.all():
        assert ThreadMode.from_name(str(m)) == m and hash(ThreadMode.from_name(m.name)) == hash(m)
    assert ThreadMode.SPAWNED != ThreadMode.ALL and len({*ThreadMode.all()}) == 3
    with pytest.raises(ValueError, match='unknown thread mode "sideways" \\(expected one of: current_thread, spawned, all\\)'):
        ThreadMode.from_name("sideways")
    # The plugin's charge-mode text keeps its own suffix: it is not a mode name.
    with pytest.raises(ValueError, match='unknown thread mode "spawned\\+tracers"'):
        ThreadMode.from_name("spawned+tracers")


def test_frame_kind_members() -> None:
    kinds = [FrameKind.PYTHON, FrameKind.NATIVE, FrameKind.INTERPRETER]
    assert [str(k) for k in kinds] == ["python", "native", "interpreter"] and len(set(kinds)) == 3
