"""The result model as Python sees it (`heapgate._native`): reports, sites, allocators, frame
kinds and leak kinds are typed views of the one capture the tracker exported, and a report taken
with `checkpoint()` matches the one `stop()` returns. Runs in a fresh pytest process."""

from __future__ import annotations

from typing import Callable

import pytest

MODEL_TESTS = '''
import gc
import pytest
from heapgate import _native
from heapgate._native import Allocator, FrameKind, LeakKinds

def tracked(mode="current_thread", native=False):
    keep = []
    gc.collect()
    _native.start([], None, mode, native)
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
    assert totals.definitely_lost.bytes >= 4096 and totals.still_reachable.bytes >= 8192
    lost = totals.definitely_lost.bytes + totals.indirectly_lost.bytes + totals.possibly_lost.bytes
    assert totals.lost.bytes == lost
    kinds = report.leak_kinds
    assert kinds is not None
    for name in ("definitely_lost", "indirectly_lost", "possibly_lost", "still_reachable"):
        assert getattr(kinds, name).bytes == getattr(totals, name).bytes
        per_site = sum(getattr(s.leak_kinds, name).bytes for s in report.sites if s.leak_kinds)
        assert per_site == getattr(totals, name).bytes, name
    del keep

def test_bad_names_are_named():
    with pytest.raises(ValueError, match='unknown thread mode "sideways" \\\\(expected one of: current_thread, spawned, all\\\\)'):
        _native.start([], None, "sideways")
    with pytest.raises(ValueError, match='unknown allocator "malloc2"'):
        Allocator.from_name("malloc2")
    assert [str(a) for a in Allocator.all()][:2] == ["malloc", "calloc"]
    assert not _native.is_active()
'''


def test_the_result_model_from_python(run: Callable[..., pytest.RunResult], pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_model=MODEL_TESTS)
    result = run("-q")
    result.assert_outcomes(passed=3)
