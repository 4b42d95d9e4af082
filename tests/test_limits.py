"""Parsing and printing sizes (pure Python, no tracking)."""

from __future__ import annotations

import pytest

from heapgate import LimitError, format_size, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("50MB", 50 * 1024**2),
        ("50mb", 50 * 1024**2),
        ("15 MB", 15 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1.5 gb", 3 * 1024**3 // 2),
        ("1KB", 1024),
        ("1KiB", 1024),
        ("2TB", 2 * 1024**4),
        ("3tib", 3 * 1024**4),
        ("100B", 100),
        ("100", 100),
        (" 7 b ", 7),
        (".5KB", 512),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["abc", "-5MB", "12 parsecs", "", "5 MBs", "1e6", "5K", -1, 1.5, None, True, "1,5MB"])
def test_bad_sizes_quote_the_value_and_the_accepted_forms(bad: object) -> None:
    with pytest.raises(LimitError) as info:
        parse_size(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "KiB, MiB, GiB, TiB" in message


def test_kb_are_powers_of_1024_as_in_pytest_memray() -> None:
    assert parse_size("1MB") == parse_size("1MiB") == 1_048_576


@pytest.mark.parametrize(
    "size, text",
    [(0, "0B"), (1023, "1023B"), (1024, "1.0KiB"), (10 * 1024**2, "10.0MiB"), (5 * 1024**3 // 2, "2.5GiB"), (3 * 1024**5, "3072.0TiB")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
