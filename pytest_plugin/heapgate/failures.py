"""One test's failure text, built from the core's numbers: a pure function of its inputs (no
pytest objects, no cache, no files), so every combination of checks is unit-tested directly.
The texts themselves come from the modules that own each check."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .baseline import increase_failure
from .formatting import peak_failure
from .leakcheck import Suppression, limit_leaks_failure, native_leaks_result
from .limits import format_size
from .markers import Checks
from .repeat import growth_failure

if TYPE_CHECKING:
    from ._native import Report

__all__ = ["Failure", "Judged", "Policy", "charge_mode", "fail_on_increase_failure", "judge"]


@dataclass(frozen=True)
class Policy:
    """What the session's options say about judging a test (the same for every test)."""

    rootpath: Optional[Path] = None
    max_frames: Optional[int] = None
    include_tracers: bool = False
    repeat_threshold: int = 0
    max_increase: Decimal = Decimal(10)
    min_increase: int = 0
    # -v: list still-reachable native memory by location.
    verbose: bool = False
    suppressions: Sequence[Suppression] = ()


@dataclass(frozen=True)
class Judged:
    """One tracked test's numbers and what it ran under."""

    report: Report
    checks: Checks
    passed: bool  # the test itself passed (before any memory check)
    # The peak its previous passing run left in pytest's cache, when --fail-on-increase is on.
    previous_peak: Optional[int] = None
    # The baseline's peak and the label naming the baseline file, when it has this test.
    baseline_peak: Optional[tuple[int, str]] = None
    warmup: int = 0
    totals: Sequence[int] = ()
    checkpoints: Sequence[Report] = ()
    explanations: Sequence[str] = ()


@dataclass(frozen=True)
class Failure:
    """The failure text (None: every check passed), what each suppression absorbed as
    ``[index, bytes, blocks]``, and the native leak scan's notes for the report section."""

    text: Optional[str]
    absorbed: list[list[int]] = field(default_factory=list)
    scan_notes: Optional[str] = None


def charge_mode(checks: Checks, include_tracers: bool) -> str:
    """Whose allocations the test is charged for: the thread mode, with ``+tracers`` when
    what tracers' callbacks allocate is charged too (--heapgate-include-tracers)."""
    return checks.thread_mode + ("+tracers" if include_tracers else "")


def fail_on_increase_failure(previous: int, peak: int) -> Optional[str]:
    """pytest-memray's --fail-on-increase: a peak above the previous passing run's fails."""
    if peak <= previous:
        return None
    return (
        "Test uses more memory than its previous run (--fail-on-increase)\n"
        f"  previous peak {format_size(previous)} ({previous} bytes), now {format_size(peak)} ({peak} bytes): "
        f"+{format_size(peak - previous)}"
    )


def judge(test: Judged, policy: Policy) -> Failure:
    """Every failed memory check's text, in a fixed order, joined by blank lines."""
    checks, report, root, frames = test.checks, test.report, policy.rootpath, policy.max_frames
    failures = []
    if report.interpreter_problem is not None:
        failures.append(report.interpreter_problem)
    lm = checks.limit_memory
    if lm is not None and report.peak_bytes > lm.limit:
        mode = charge_mode(checks, policy.include_tracers)
        failures.append(peak_failure(lm.limit, report, mode, rootpath=root, max_frames=frames))
    if lm is not None and test.passed and test.previous_peak is not None:
        text = fail_on_increase_failure(test.previous_peak, report.peak_bytes)
        if text is not None:
            failures.append(text)
    ll = checks.limit_leaks
    if ll is not None:
        text = limit_leaks_failure(ll.limit, report, ll.filter_fn, rootpath=root, max_frames=frames)
        if text is not None:
            failures.append(text)
    absorbed: list[list[int]] = []
    scan_notes = None
    nl = checks.native_leaks
    if nl is not None:
        # Fresh counters: what this test's leaks each suppression absorbed, nothing shared.
        fresh = [dataclasses.replace(s, bytes=0, blocks=0) for s in policy.suppressions]
        native = native_leaks_result(nl.limit, report, fresh, rootpath=root, max_frames=frames)
        absorbed = [[i, s.bytes, s.blocks] for i, s in enumerate(fresh) if s.blocks]
        if native.failure is not None:
            failures.append(native.failure)
        notes = native.reachable_locations if policy.verbose else []
        if test.explanations:
            notes = notes + [
                "Where the leak scan found references to the test's blocks (HEAPGATE_EXPLAIN_LEAKS):",
                *(f"  {line}" for line in test.explanations),
            ]
        scan_notes = "\n".join(notes) or None
    if len(test.totals) > 1:
        text = growth_failure(
            test.totals, test.checkpoints, policy.repeat_threshold, rootpath=root, max_frames=frames
        )
        if text is not None:
            failures.append(text)
    if test.baseline_peak is not None:
        old, label = test.baseline_peak
        text = increase_failure(old, report.peak_bytes, policy.max_increase, policy.min_increase, label)
        if text is not None:
            failures.append(text)
    if failures and test.warmup:
        failures.append(f"(measured after {test.warmup} warm-up run{'s' if test.warmup != 1 else ''} of the call)")
    return Failure("\n\n".join(failures) if failures else None, absorbed, scan_notes)
