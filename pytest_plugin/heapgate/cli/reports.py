"""``heapgate flamegraph``, ``report``, ``summary`` and ``junit``: the files ``--heapgate-dir``
leaves, opened again (on this machine or another one).

Exit codes: 0 success; 1 the file records a failed memory check (``report``, ``summary``);
2 bad usage, or a file that cannot be read or written (one line on stderr naming the file and
the problem).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional

__all__ = ["register"]


def _error(message: str) -> int:
    print(f"heapgate: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _output(path: Optional[str], text: str) -> int:
    if path is None or path == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        return _error(f"{path}: cannot write: {e.strerror or e}")
    return 0


def _read_record(path: str) -> Any:
    from .._native import Record

    return Record.read(path)


def flamegraph(args: argparse.Namespace) -> int:
    from .._native import ReportFileError

    try:
        record = _read_record(args.capture)
        svg = record.folded(args.leaked) if args.folded else record.flamegraph_svg()
    except (ReportFileError, ValueError) as e:
        return _error(str(e))
    return _output(args.output, svg)


def report(args: argparse.Namespace) -> int:
    from .._native import ReportFileError

    try:
        record = _read_record(args.capture)
    except ReportFileError as e:
        return _error(str(e))
    text = record.text(max_frames=args.stacks)
    print(text)
    return 1 if record.memory_failed else 0


def summary(args: argparse.Namespace) -> int:
    from .._native import ReportFileError, SessionReport

    try:
        report = SessionReport.read(args.report)
    except ReportFileError as e:
        return _error(str(e))
    print(report.headline())
    for line in report.summary_lines(max(args.most, 0)):
        print(line)
    return 1 if report.memory_failures else 0


def junit(args: argparse.Namespace) -> int:
    from .._native import ReportFileError, SessionReport

    try:
        report = SessionReport.read(args.report)
    except ReportFileError as e:
        return _error(str(e))
    # Attachment paths are relative to the report's directory unless --base says otherwise.
    base = args.base if args.base is not None else os.path.dirname(args.report)
    return _output(args.output, report.junit(base))


def register(subparsers: Any) -> None:
    """Add ``flamegraph``, ``report``, ``summary`` and ``junit`` to the ``heapgate`` command."""
    p = subparsers.add_parser(
        "flamegraph",
        help="render a capture file's flamegraph (SVG)",
        description="Render the flamegraph of a capture file (bytes at the peak) as SVG.",
    )
    p.add_argument("capture", metavar="CAPTURE", help="a .heapgate capture file")
    p.add_argument("-o", "--output", metavar="OUT", help="SVG file to write (default: standard output)")
    p.add_argument("--folded", action="store_true", help="print folded stacks instead of SVG")
    p.add_argument("--leaked", action="store_true", help="with --folded: weigh by bytes leaked")
    p.set_defaults(handler=flamegraph)

    p = subparsers.add_parser(
        "report",
        help="print a capture file's failure text, symbolized on this machine",
        description=(
            "Print the failure text of a capture file (or its numbers and top locations if it "
            "passed). Native frames are symbolized here: build-ids find debug info "
            "(and debuginfod, if DEBUGINFOD_URLS is set). Exit 1 if the capture records a "
            "failed memory check."
        ),
    )
    p.add_argument("capture", metavar="CAPTURE", help="a .heapgate capture file")
    p.add_argument("--stacks", type=int, default=None, metavar="N", help="frames shown per stack")
    p.set_defaults(handler=report)

    p = subparsers.add_parser(
        "summary",
        help="table of a session's tracked tests by peak",
        description="Print the tracked tests of a heapgate.json by peak. Exit 1 if any failed a memory check.",
    )
    p.add_argument("report", metavar="REPORT", help="a heapgate.json session report")
    p.add_argument("-n", "--most", type=int, default=0, metavar="N", help="rows shown (default 0: all)")
    p.set_defaults(handler=summary)

    p = subparsers.add_parser(
        "junit",
        help="JUnit XML of a session report",
        description="Write heapgate's JUnit XML (memory results, flamegraph attachments) for a heapgate.json.",
    )
    p.add_argument("report", metavar="REPORT", help="a heapgate.json session report")
    p.add_argument("-o", "--output", metavar="OUT", help="XML file to write (default: standard output)")
    p.add_argument("--base", default=None, help="directory attachment paths are joined to (default: the report's)")
    p.set_defaults(handler=junit)
