"""heapgate: exact memory assertions for pytest, with native capture in a Rust core."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .limits import LimitError, format_size, parse_size

try:
    __version__ = version("pytest-heapgate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["LimitError", "__version__", "format_size", "parse_size"]
