"""Memory sizes as users write them in markers, ini files and flags.

KB, MB, GB and TB are powers of 1024, exactly as pytest-memray reads them, so a suite that
migrates keeps its limits byte for byte; KiB, MiB, GiB and TiB are the same values spelled
unambiguously.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["LimitError", "format_size", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1024,
    "kib": 1024,
    "mb": 1024**2,
    "mib": 1024**2,
    "gb": 1024**3,
    "gib": 1024**3,
    "tb": 1024**4,
    "tib": 1024**4,
}

_SIZE = re.compile(r"^\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>[A-Za-z]*)\s*$")

ACCEPTED_FORMS = (
    "a non-negative number of bytes, optionally with a unit: 1024, '15 MB', '1.5GiB' "
    "(units B, KB, MB, GB, TB and KiB, MiB, GiB, TiB, case-insensitive; KB = KiB = 1024 bytes)"
)


class LimitError(ValueError):
    """A memory size that cannot be read; the message quotes it and the accepted forms."""


def parse_size(value: object, what: str = "memory limit") -> int:
    """Bytes in ``value``: an int (bytes) or a string such as ``"15 MB"`` or ``"1.5GiB"``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise LimitError(f"invalid {what} {value!r}: expected {ACCEPTED_FORMS}")
    if isinstance(value, int):
        if value < 0:
            raise LimitError(f"invalid {what} {value!r}: it is negative; expected {ACCEPTED_FORMS}")
        return value
    match = _SIZE.match(value)
    if match is None or match["unit"].lower() not in _UNITS:
        raise LimitError(f"invalid {what} {value!r}: expected {ACCEPTED_FORMS}")
    # Exact arithmetic: decimal's default context keeps 28 digits and would round the product.
    number = Fraction(match["number"])
    if number < 0:
        raise LimitError(f"invalid {what} {value!r}: it is negative; expected {ACCEPTED_FORMS}")
    return int(number * _UNITS[match["unit"].lower()])


def format_size(size: int) -> str:
    """``10.0MiB``-style text for a byte count (binary prefixes, one decimal), as every report
    writes it: the Rust core's ``report::format_size``."""
    from ._native import format_size as core_format_size

    return core_format_size(size)
