"""``heapgate github``: publish a session report to GitHub Actions — the job summary
(``$GITHUB_STEP_SUMMARY``), ``::error`` annotations at the allocating line of the user's code,
and step outputs (``$GITHUB_OUTPUT``). The action in ``action/`` runs it; it works in any
workflow step after ``pytest --heapgate-dir=DIR``.

The Markdown and the annotation lines are rendered by the Rust core
(``heapgate_core::report::github``); this module finds the files, reads the environment and
writes the results where GitHub reads them.

Exit codes: 0 once published (the ``failed`` output says whether the run failed); 2 bad
usage or a file that cannot be read or written.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Optional

from ..artifacts import JSON_NAME

__all__ = ["SUMMARY_NAME", "register"]

SUMMARY_NAME = "heapgate-summary.md"


def _error(message: str) -> int:
    print(f"heapgate: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _shard_reports(directory: Path) -> list[str]:
    """Every ``heapgate.json`` below ``directory`` (downloaded shard artifacts), not the
    merged one at its top, in path order so the merge is the same on every run."""
    found = sorted(p for p in directory.rglob(JSON_NAME) if p.parent != directory)
    return [str(p) for p in found]


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _output_lines(outputs: dict[str, str]) -> str:
    """``$GITHUB_OUTPUT`` entries in the multi-line form, with a delimiter no value contains."""
    lines = []
    for name, value in outputs.items():
        delimiter = f"heapgate_{secrets.token_hex(8)}"
        while delimiter in value:  # pragma: no cover - 64 random bits
            delimiter = f"heapgate_{secrets.token_hex(8)}"
        lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(lines)


def _blob_and_run_urls() -> tuple[Optional[str], Optional[str]]:
    server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    if not server or not repo:
        return None, None
    sha, run = os.environ.get("GITHUB_SHA"), os.environ.get("GITHUB_RUN_ID")
    blob = f"{server}/{repo}/blob/{sha}" if sha else None
    runs = f"{server}/{repo}/actions/runs/{run}" if run else None
    return blob, runs


def github(args: argparse.Namespace) -> int:
    from .._native import MAX_ANNOTATIONS, ReportFileError, SessionReport
    from ..baseline import Baseline, BaselineError
    from .merge import merge_reports

    directory = Path(args.dir)
    if not directory.is_dir():
        return _error(f"{args.dir}: not a directory (the --heapgate-dir of a pytest run)")
    report = directory / JSON_NAME
    if args.merge:
        shards = _shard_reports(directory)
        if not shards:
            return _error(f"{args.dir}: no {JSON_NAME} below it to merge (download the shards' artifacts into it)")
        try:
            text, count = merge_reports(shards, directory.resolve())
            report.write_text(text, encoding="utf-8")
        except ReportFileError as e:
            return _error(str(e))
        except OSError as e:
            return _error(f"{report}: cannot write: {e.strerror or e}")
        print(f"heapgate: {count} tests from {len(shards)} reports merged into {report}", file=sys.stderr)
    elif not report.is_file():
        return _error(f"{report}: no session report (did pytest run with --heapgate-dir={args.dir}?)")

    baseline: Optional[tuple[str, dict[str, int]]] = None
    if args.baseline:
        try:
            loaded = Baseline.load(Path(args.baseline))
        except BaselineError as e:
            return _error(str(e).removeprefix("heapgate: "))
        baseline = (args.baseline, {nodeid: e.peak_bytes for nodeid, e in loaded.tests.items()})

    blob_url, run_url = _blob_and_run_urls()
    try:
        session = SessionReport.read(str(report))
        summary, annotations = session.github(
            os.environ.get("GITHUB_WORKSPACE") or os.getcwd(),
            blob_url=blob_url,
            artifact=args.artifact or None,
            run_url=run_url,
            exit_code=args.exit_code,
            baseline=baseline,
            top=args.top,
        )
    except ReportFileError as e:
        return _error(str(e))

    failed = args.exit_code != 0 if args.exit_code is not None else bool(session.memory_failures)
    summary_path = directory / SUMMARY_NAME
    outputs = {
        "failed": "true" if failed else "false",
        "report-path": str(report.resolve()),
        "peak-max-bytes": str(max((peak for _, peak, _ in session.peaks()), default=0)),
        "summary-path": str(summary_path.resolve()),
    }
    try:
        summary_path.write_text(summary, encoding="utf-8")
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary:
            _append(step_summary, summary)
        else:
            sys.stdout.write(summary)
        github_output = os.environ.get("GITHUB_OUTPUT")
        if github_output:
            _append(github_output, _output_lines(outputs))
    except OSError as e:
        return _error(f"{e.filename}: cannot write: {e.strerror or e}")
    if args.annotate:
        limit = MAX_ANNOTATIONS if args.max_annotations is None else args.max_annotations
        for line in annotations[:limit]:
            print(line)
    return 0


def register(subparsers: Any) -> None:
    """Add ``github`` to the ``heapgate`` command."""
    p = subparsers.add_parser(
        "github",
        help="publish a report to GitHub Actions: job summary, annotations, outputs",
        description=(
            "Write the job summary of a --heapgate-dir to $GITHUB_STEP_SUMMARY (standard output "
            "outside Actions) and to DIR/heapgate-summary.md, print ::error annotations at the "
            "allocating line of code under $GITHUB_WORKSPACE, and set the outputs failed, "
            "report-path, peak-max-bytes and summary-path in $GITHUB_OUTPUT. Exit 0 once "
            "published, 2 on bad input."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="the --heapgate-dir of the pytest run (holds heapgate.json)")
    p.add_argument(
        "--merge",
        action="store_true",
        help="first join every heapgate.json below DIR (shard artifacts) into DIR/heapgate.json",
    )
    p.add_argument("--exit-code", type=int, default=None, metavar="N", help="pytest's exit status (decides 'failed')")
    p.add_argument("--baseline", metavar="FILE", help="a --heapgate-save baseline: list increases and decreases")
    p.add_argument("--artifact", metavar="NAME", default=None, help="name of the uploaded artifact, named in the summary")
    p.add_argument("--top", type=int, default=5, metavar="N", help="rows of the highest-peaks table (default 5)")
    p.add_argument("--no-annotations", dest="annotate", action="store_false", help="print no ::error lines")
    p.add_argument(
        "--max-annotations",
        type=int,
        default=None,
        metavar="N",
        help="annotations printed, largest first (default: GitHub's limit of error annotations per step)",
    )
    p.set_defaults(handler=github)
