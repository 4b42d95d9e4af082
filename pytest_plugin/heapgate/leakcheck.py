"""Suppressions for ``--native-leaks``: LeakSanitizer-style ``leak:PATTERN`` lines read from
a file. The leak checks themselves (``limit_leaks`` and ``--native-leaks``: grouping,
matching, verdicts and texts) are the Rust core's (``report/leaks.rs``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Suppression", "SuppressionError", "load_suppressions"]


class SuppressionError(ValueError):
    """A suppressions file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Suppression:
    """One ``leak:PATTERN`` line: substring match, ``*`` any run, ``^``/``$`` anchors,
    against each frame's function, file and object names (matched by the Rust core)."""

    pattern: str
    source: str


def load_suppressions(path: Path) -> list[Suppression]:
    """Read a LeakSanitizer-style suppressions file: ``leak:PATTERN`` lines, ``#`` comments."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SuppressionError(f"heapgate: cannot read suppressions file {path}: {e}") from None
    suppressions = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, pattern = line.partition(":")
        if not sep or kind.strip() != "leak" or not pattern.strip():
            raise SuppressionError(
                f"heapgate: {path}:{number}: expected 'leak:PATTERN' (or a # comment), found {raw!r}"
            )
        suppressions.append(Suppression(pattern.strip(), f"{path.name}:{number}"))
    return suppressions
