"""The failure builder (failures.judge) on the core's real numbers: each check's text in a
fixed order, byte for byte what the core's renderer of that check writes, and nothing outside
its inputs touched. The captures are made in a fresh process (pytester subprocess): the core's hooks go
into that process only."""

from __future__ import annotations

import pytest

UNIT_TESTS = '''
from decimal import Decimal

from heapgate import _native
from heapgate.failures import Judged, Policy, judge
from heapgate.leakcheck import load_suppressions
from heapgate.limits import format_size
from heapgate.markers import Checks, LimitLeaks, LimitMemory, NativeLeaks

KEPT = []


def capture(nbytes, keep):
    """A real report: one bytearray of nbytes, kept alive (a leak) or freed."""
    _native.start([], None, _native.ThreadMode.CURRENT_THREAD, False)
    try:
        data = bytearray(nbytes)
        if keep:
            KEPT.append(data)
        del data
    finally:
        report = _native.stop()
    return report


def test_within_every_limit_nothing_fails():
    report = capture(100_000, keep=False)
    checks = Checks(limit_memory=LimitMemory(limit=10_000_000), limit_leaks=LimitLeaks(limit=10_000_000))
    failure = judge(Judged(report, checks, passed=True, previous_peak=report.peak_bytes, warmup=3), Policy())
    assert (failure.text, failure.absorbed, failure.scan_notes) == (None, [], None)


def test_every_failure_in_order_with_the_warmup_note(tmp_path):
    report = capture(300_000, keep=True)
    assert report.peak_bytes > 300_000 and report.leaked_bytes > 300_000
    checks = Checks(limit_memory=LimitMemory(limit=200_000), limit_leaks=LimitLeaks(limit=1000))
    policy = Policy(rootpath=tmp_path, max_frames=2, max_increase=Decimal(10), min_increase=0)
    test = Judged(report, checks, passed=True, previous_peak=1000, baseline_peak=(1000, "--heapgate-compare b.json"), warmup=2)
    failure = judge(test, policy)
    expected = [
        report.peak_failure(200_000, checks.thread_mode, False, str(tmp_path), max_frames=2),
        "Test uses more memory than its previous run (--fail-on-increase)\\n"
        f"  previous peak 1000B (1000 bytes), now {format_size(report.peak_bytes)} ({report.peak_bytes} bytes): "
        f"+{format_size(report.peak_bytes - 1000)}",
        _native.limit_leaks_failure(report, 1000, None, str(tmp_path), 2),
        _native.baseline_failure(1000, report.peak_bytes, _native.Tolerance(Decimal(10), 0), "--heapgate-compare b.json"),
        "(measured after 2 warm-up runs of the call)",
    ]
    assert all(expected)
    assert failure.text == "\\n\\n".join(expected)
    # The same inputs, the same answer: nothing kept between calls.
    assert judge(test, policy) == failure


def test_fail_on_increase_only_for_a_passed_test_above_its_previous_peak():
    report = capture(50_000, keep=False)
    checks = Checks(limit_memory=LimitMemory(limit=10_000_000))
    peak = report.peak_bytes
    assert judge(Judged(report, checks, passed=False, previous_peak=1), Policy()).text is None
    assert judge(Judged(report, checks, passed=True, previous_peak=peak), Policy()).text is None
    assert judge(Judged(report, checks, passed=True, previous_peak=peak - 1), Policy()).text == _native.fail_on_increase_failure(peak - 1, peak)
    assert _native.fail_on_increase_failure(1024, 3072) == (
        "Test uses more memory than its previous run (--fail-on-increase)\\n"
        "  previous peak 1.0KiB (1024 bytes), now 3.0KiB (3072 bytes): +2.0KiB"
    )
    # Without a limit_memory check there is no previous peak to compare with.
    assert judge(Judged(report, Checks(), passed=True, previous_peak=1), Policy()).text is None


def test_native_check_leaves_the_sessions_suppressions_alone(tmp_path):
    (tmp_path / "supp.txt").write_text("leak:*\\n")
    suppressions = load_suppressions(tmp_path / "supp.txt")
    report = capture(10_000, keep=True)
    failure = judge(Judged(report, Checks(native_leaks=NativeLeaks(0)), passed=True), Policy(suppressions=suppressions))
    assert failure.text is None and failure.scan_notes is None and failure.absorbed == []
    assert suppressions == load_suppressions(tmp_path / "supp.txt")
'''


def test_failure_builder(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_units=UNIT_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=120)
    result.assert_outcomes(passed=4)
