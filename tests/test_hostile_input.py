"""Hostile input for the parsers that read what users write (property tests, bounded time):
memory limits (markers, flags, ini) and LeakSanitizer-style suppressions files. Each parser
returns a value or raises its own error naming the problem; nothing else escapes. The capture
reader and the symbolizer are fuzzed in Rust (rust/core/src/record/tests.rs,
rust/core/tests/symbolize_fuzz.rs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from heapgate import LimitError, parse_size  # noqa: E402
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


@dataclass
class Frame:
    function: str
    filename: Optional[str]
    module: Optional[str]


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
        frame = Frame("f", "f.c", None)
        for s in suppressions:
            s.matches(frame)  # every loaded pattern compiles and can be applied


NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="*^$#:"), min_size=1, max_size=30).map(str.strip).filter(bool)


@BOUNDED
@given(st.lists(NAME, min_size=1, max_size=8), st.text(max_size=10), st.text(max_size=10))
def test_a_suppression_matches_any_name_that_contains_its_pattern(tmp_path: Path, patterns: list[str], before: str, after: str) -> None:
    path = tmp_path / "leaks.supp"
    path.write_text("# generated\n" + "".join(f"leak:{p}\n" for p in patterns), encoding="utf-8")
    loaded = load_suppressions(path)
    assert [s.pattern for s in loaded] == patterns
    for s, p in zip(loaded, patterns):
        assert s.matches(Frame(before + p + after, None, None))
        anchored = load_suppressions(_write(tmp_path / "anchored.supp", f"leak:^{p}$\n"))[0]
        assert anchored.matches(Frame(p, None, None))
        assert not anchored.matches(Frame(p + "x", None, None))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
