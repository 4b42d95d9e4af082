"""``heapgate merge``: join the ``heapgate.json`` reports of several CI jobs (matrix shards,
pytest-xdist runs on several machines) into one.

Tests keep their order (report by report); every entry is kept, so a test run by two jobs
appears twice. Artifact paths are rewritten to stay relative to the merged report's
directory. Session facts come from the first report; the counts are recomputed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["merge_reports", "register"]


def _error(message: str) -> int:
    print(f"heapgate: {' '.join(message.split())}", file=sys.stderr)
    return 2


def merge_reports(reports: Sequence[str], out_dir: Path) -> tuple[str, int]:
    """The merged report's text and its number of tests; artifact paths made relative to
    ``out_dir``. Raises ReportFileError naming a report that cannot be read."""
    from .._native import SessionReport

    merged = SessionReport.merge(list(reports), str(out_dir))
    return merged.to_json(), merged.tracked


def merge(args: argparse.Namespace) -> int:
    from .._native import ReportFileError

    out_dir = Path(args.output).resolve().parent if args.output not in (None, "-") else Path.cwd()
    try:
        text, count = merge_reports(args.reports, out_dir)
    except ReportFileError as e:
        return _error(str(e))
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as e:
        return _error(f"{args.output}: cannot write: {e.strerror or e}")
    print(f"heapgate: {count} tests from {len(args.reports)} reports merged into {args.output}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``merge`` to the ``heapgate`` command."""
    p = subparsers.add_parser(
        "merge",
        help="join several heapgate.json session reports into one",
        description="Join heapgate.json session reports (e.g. from CI matrix shards) into one report.",
    )
    p.add_argument("reports", metavar="REPORT", nargs="+", help="heapgate.json session reports")
    p.add_argument("-o", "--output", metavar="OUT", help="merged report to write (default: standard output)")
    p.set_defaults(handler=merge)
