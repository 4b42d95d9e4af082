"""One test's failure text, built from the core's numbers: a pure function of its inputs (no
pytest objects, no cache, no files), so every combination of checks is unit-tested directly.
This module decides which checks apply and in which order; each check's verdict and text come
from the Rust core (``heapgate_core::report``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .leakcheck import Suppression
from .markers import Checks

if TYPE_CHECKING:
    from ._native import Report

__all__ = ["Failure", "Judged", "Policy", "judge"]


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
    ``(index, bytes, blocks)``, and the native leak scan's notes for the report section."""

    text: Optional[str]
    absorbed: list[tuple[int, int, int]] = field(default_factory=list)
    scan_notes: Optional[str] = None


def judge(test: Judged, policy: Policy) -> Failure:
    """Every failed memory check's text, in a fixed order, joined by blank lines."""
    from . import _native

    checks, report, root, frames = test.checks, test.report, policy.rootpath, policy.max_frames
    rootpath = str(root) if root is not None else None
    failures: list[Optional[str]] = []
    if report.interpreter_problem is not None:
        failures.append(report.interpreter_problem)
    lm = checks.limit_memory
    if lm is not None and report.peak_bytes > lm.limit:
        failures.append(
            report.peak_failure(lm.limit, checks.thread_mode, policy.include_tracers, rootpath, max_frames=frames)
        )
    if lm is not None and test.passed and test.previous_peak is not None:
        failures.append(_native.fail_on_increase_failure(test.previous_peak, report.peak_bytes))
    ll = checks.limit_leaks
    if ll is not None:
        failures.append(_native.limit_leaks_failure(report, ll.limit, ll.filter_fn, rootpath, frames))
    absorbed: list[tuple[int, int, int]] = []
    scan_notes = None
    nl = checks.native_leaks
    if nl is not None:
        suppressions = [(s.pattern, s.source) for s in policy.suppressions]
        # The still-reachable listing is shown only with -v (and symbolizing it costs).
        native = _native.native_leaks_check(
            report, nl.limit, suppressions, rootpath, frames, list_reachable=policy.verbose
        )
        absorbed = native.absorbed
        failures.append(native.failure)
        notes = [native.reachable_text] if policy.verbose and native.reachable_text else []
        if test.explanations:
            notes += [
                "Where the leak scan found references to the test's blocks (HEAPGATE_EXPLAIN_LEAKS):",
                *(f"  {line}" for line in test.explanations),
            ]
        scan_notes = "\n".join(notes) or None
    if len(test.totals) > 1:
        failures.append(
            _native.growth_failure(list(test.totals), list(test.checkpoints), policy.repeat_threshold, rootpath, frames)
        )
    if test.baseline_peak is not None:
        old, label = test.baseline_peak
        tolerance = _native.Tolerance(policy.max_increase, policy.min_increase)
        failures.append(_native.baseline_failure(old, report.peak_bytes, tolerance, label))
    texts = [text for text in failures if text is not None]
    if texts and test.warmup:
        texts.append(_native.warmup_note(test.warmup))
    return Failure("\n\n".join(texts) if texts else None, absorbed, scan_notes)
