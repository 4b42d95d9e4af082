"""Hostile input for the parsers that read what users write (property tests, bounded time):
memory limits (markers, flags, ini) and LeakSanitizer-style suppressions files. Each parser
returns a value or raises its own error naming the problem; nothing else escapes. The capture
reader and the symbolizer are fuzzed in Rust (rust/core/src/record/tests.rs,
rust/core/tests/symbolize_fuzz.rs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from heapgate import LimitError, parse_size  # noqa: E402
from heapgate._native import suppression_matches  # noqa: E402
from heapgate.leakcheck import SuppressionError, load_suppressions  # noqa: E402

BOUNDED = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
UNITS = {"": 1, "b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2, "gb": 1024**3, "gib": 1024**3, "tb": 1024**4, "tib": 1024**4}


@BOUNDED
@given(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.binary(), st.booleans(), st.lists(st.integers())))
def test_parse_size_returns_bytes_or_a_limit_error(value: object) -> None:
    try:
        size = parse_size(value)
    except LimitError as e:
        assert repr(value)[:20] in str(e) or "invalid memory limit" in str(e)
    else:
        assert isinstance(size, int) and size >= 0


@BOUNDED
@given(st.integers(min_value=0, max_value=10**60), st.sampled_from(sorted(UNITS)), st.booleans(), st.booleans())
def test_parse_size_is_exact_for_every_integer_and_unit(n: int, unit: str, space: bool, upper: bool) -> None:
    text = f"{n}{' ' if space else ''}{unit.upper() if upper else unit}"
    assert parse_size(text) == n * UNITS[unit]


@BOUNDED
@given(st.integers(min_value=0, max_value=10**40), st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_parse_size_of_a_decimal_truncates_the_exact_product(whole: int, frac: int, unit: str) -> None:
    from fractions import Fraction

    text = f"{whole}.{frac}{unit}"
    assert parse_size(text) == int(Fraction(f"{whole}.{frac}") * UNITS[unit])


def test_parse_size_regression_more_than_28_digits() -> None:
    # Found by the property above: decimal's default 28-digit context rounded the product,
    # so a 29-digit byte count came back as a different number.
    assert parse_size("99999999999999999999999999999") == 99999999999999999999999999999
    assert parse_size("12345678901234567890123456789.5 KiB") == 12345678901234567890123456789 * 1024 + 512


@BOUNDED
@given(st.binary(max_size=512))
def test_any_suppressions_file_loads_or_names_the_problem(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "leaks.supp"
    path.write_bytes(data)
    try:
        suppressions = load_suppressions(path)
    except SuppressionError as e:
        assert str(path) in str(e)
    else:
        for s in suppressions:
            suppression_matches(s.pattern, "f")  # every loaded pattern can be applied


NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="*^$#:"), min_size=1, max_size=30).map(str.strip).filter(bool)


@BOUNDED
@given(st.lists(NAME, min_size=1, max_size=8), st.text(max_size=10), st.text(max_size=10))
def test_a_suppression_matches_any_name_that_contains_its_pattern(tmp_path: Path, patterns: list[str], before: str, after: str) -> None:
    path = tmp_path / "leaks.supp"
    path.write_text("# generated\n" + "".join(f"leak:{p}\n" for p in patterns), encoding="utf-8")
    loaded = load_suppressions(path)
    assert [s.pattern for s in loaded] == patterns
    for s, p in zip(loaded, patterns):
        assert suppression_matches(s.pattern, before + p + after)
        anchored = load_suppressions(_write(tmp_path / "anchored.supp", f"leak:^{p}$\n"))[0]
        assert suppression_matches(anchored.pattern, p)
        assert not suppression_matches(anchored.pattern, p + "x")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _as_regex(pattern: str) -> re.Pattern[str]:
    """LeakSanitizer's pattern language spelled as a regex: the oracle of the core's matcher."""
    start = pattern.startswith("^")
    end = pattern.endswith("$") and len(pattern) > int(start)
    body = pattern[int(start) : len(pattern) - int(end)]
    return re.compile(("^" if start else "") + ".*".join(re.escape(p) for p in body.split("*")) + ("$" if end else ""))


@BOUNDED
@given(st.text("ab*^$", min_size=1, max_size=8), st.text("ab$^*", max_size=10))
def test_suppression_patterns_match_as_leak_sanitizer_reads_them(pattern: str, name: str) -> None:
    assert suppression_matches(pattern, name) == bool(_as_regex(pattern).search(name)), (pattern, name)
