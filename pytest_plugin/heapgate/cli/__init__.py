"""The ``heapgate`` command. Each submodule named in COMMAND_MODULES adds its subcommands
through ``register(subparsers)``; a subcommand's handler returns the exit code.

Exit codes: 0 success, 1 the command ran and found a problem (a failing check), 2 bad usage
or unreadable input (the message names the file and the problem).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

COMMAND_MODULES: tuple[str, ...] = ("symbols", "reports", "merge", "github")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heapgate",
        description="heapgate: inspect memory captures, reports and debug info.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Optional[Handler] = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
