"""``heapgate addr2line`` and ``heapgate doctor``: what the symbolizer sees.

``addr2line`` prints exactly what binutils' ``addr2line`` prints for the same flags, so the
symbolizer behind heapgate's native stacks can be checked against the usual tools.
``doctor`` says, for every object a Python process has loaded, where its debug info comes
from, what reports will therefore show for its frames, and how to get better ones.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from .._native import ObjectDebugInfo, Symbolizer

__all__ = ["register", "addr2line", "doctor", "doctor_lines"]

# What a source of debug info means for a report frame.
_SOURCES = {
    "embedded": ("embedded DWARF", "file:line"),
    "build-id": ("build-id debug file", "file:line"),
    "debuglink": ("debuglink debug file", "file:line"),
    "debuginfod": ("debuginfod", "file:line"),
    "symtab": ("symbol table only", "function names only"),
    "minidebuginfo": ("symbol table only (MiniDebugInfo)", "function names only"),
    "none": ("nothing", "addresses"),
    "unreadable": ("unreadable", "addresses"),
}

_SYSTEM_PREFIXES = ("/usr/", "/lib/", "/lib64/", "/lib32/", "/bin/", "/sbin/", "/opt/")


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _symbolizer() -> Symbolizer:
    from .._native import Symbolizer

    return Symbolizer(on_message=_warn)


def register(subparsers: Any) -> None:
    """Add ``addr2line`` and ``doctor`` to the ``heapgate`` command."""
    p = subparsers.add_parser(
        "addr2line",
        help="symbolize addresses in an object file (binutils addr2line's output)",
        description=(
            "Print function, file and line for addresses in OBJECT, in binutils addr2line's "
            "format, as heapgate's reports resolve them (DWARF, separate debug files, "
            "debuginfod, symbol tables). Addresses are hex, relative to the object file; "
            "without ADDRESS they are read from standard input."
        ),
    )
    p.add_argument("-a", "--addresses", action="store_true", help="print each address first")
    p.add_argument("-f", "--functions", action="store_true", help="print function names")
    p.add_argument("-i", "--inlines", action="store_true", help="also print the functions an address was inlined into")
    p.add_argument("-C", "--demangle", action="store_true", help="demangle C++ and Rust names")
    p.add_argument("-s", "--basenames", action="store_true", help="file base names only")
    p.add_argument("-p", "--pretty-print", action="store_true", help="one line per address")
    p.add_argument("-e", "--exe", metavar="OBJECT", default="a.out", help="the object file (default a.out)")
    p.add_argument("address", nargs="*", help="hex address (0x optional)")
    p.set_defaults(handler=_addr2line_command)

    d = subparsers.add_parser(
        "doctor",
        help="where the debug info of the interpreter and its loaded libraries comes from",
        description=(
            "For the interpreter and every shared object this Python process has loaded "
            "(after importing the --import modules): where its debug info comes from, what "
            "heapgate's reports will show for its frames, and the fix."
        ),
    )
    d.add_argument(
        "--import",
        dest="imports",
        metavar="MODULE",
        action="append",
        default=[],
        help="import MODULE first so its extensions and libraries are loaded (repeatable)",
    )
    d.add_argument(
        "--object",
        dest="objects",
        metavar="PATH",
        action="append",
        default=[],
        help="check this object file instead of the loaded ones (repeatable)",
    )
    d.set_defaults(handler=_doctor_command)


def addr2line(argv: Sequence[str], symbolizer: Optional[Symbolizer] = None) -> str:
    """binutils ``addr2line`` output for ``argv`` (arguments without the program name)."""
    return (symbolizer or _symbolizer()).addr2line(list(argv))


def _addr2line_command(args: argparse.Namespace) -> int:
    flags = "".join(
        flag
        for flag, on in (
            ("a", args.addresses),
            ("f", args.functions),
            ("i", args.inlines),
            ("C", args.demangle),
            ("s", args.basenames),
            ("p", args.pretty_print),
        )
        if on
    )
    addresses: list[str] = list(args.address)
    if not addresses:
        addresses = sys.stdin.read().split()
    argv = ([f"-{flags}"] if flags else []) + ["-e", args.exe, *addresses]
    try:
        text = addr2line(argv)
    except ValueError as e:
        _warn(f"heapgate addr2line: {e}")
        return 2
    except OSError as e:
        _warn(f"heapgate addr2line: {e}")
        return 2
    sys.stdout.write(text)
    return 0


def doctor(paths: Optional[Sequence[str]] = None, symbolizer: Optional[Symbolizer] = None) -> list[ObjectDebugInfo]:
    """Debug info records of ``paths``, or of every object loaded in this process."""
    return (symbolizer or _symbolizer()).doctor(None if paths is None else list(paths))


def _is_system(path: str) -> bool:
    real = os.path.realpath(path)
    return real.startswith(_SYSTEM_PREFIXES) and "/site-packages/" not in real and "/dist-packages/" not in real


def _packages(paths: Sequence[str]) -> dict[str, str]:
    """The debug package to install for each system path (its owner by dpkg, else rpm)."""
    real = {p: os.path.realpath(p) for p in paths if _is_system(p)}
    owner: dict[str, str] = {}
    if not real:
        return owner
    if shutil.which("dpkg-query"):
        query = sorted(set(real) | set(real.values()))
        out = subprocess.run(["dpkg-query", "-S", *query], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            package, sep, path = line.partition(": ")
            if sep and "," not in package:
                owner[path.strip()] = f"{package.split(':')[0]}-dbgsym (or {package.split(':')[0]}-dbg)"
    elif shutil.which("rpm"):
        for path in sorted(set(real.values())):
            done = subprocess.run(["rpm", "-qf", "--qf", "%{NAME}\\n", path], capture_output=True, text=True, check=False)
            if done.returncode == 0 and done.stdout.strip():
                owner[path] = f"{done.stdout.split()[0]}-debuginfo (debuginfo-install {done.stdout.split()[0]})"
    found = {p: owner.get(p) or owner.get(r, "") for p, r in real.items()}
    return {p: package for p, package in found.items() if package}


def _fix(record: ObjectDebugInfo, package: Optional[str], debuginfod: bool) -> str:
    if record.source in ("embedded", "build-id", "debuglink", "debuginfod"):
        return "ok"
    if record.source == "unreadable":
        return f"fix: {record.error}"
    hints = []
    if record.debuglink:
        hints.append(f"its debug file {record.debuglink} (.gnu_debuglink) was not found beside it, in .debug/, or under the debug roots")
    if package:
        hints.append(f"install {package}")
    elif _is_system(record.path):
        hints.append("install its -dbg/-dbgsym (rpm: -debuginfo) package")
    else:
        hints.append("build it with -g (or ship its debug file: objcopy --only-keep-debug)")
    if debuginfod:
        if record.build_id:
            hints.append(f"the DEBUGINFOD_URLS servers have no debug info for build-id {record.build_id}")
    elif record.build_id:
        hints.append("or set DEBUGINFOD_URLS (e.g. https://debuginfod.elfutils.org/)")
    return "fix: " + "; ".join(hints)


def doctor_lines(records: Sequence[ObjectDebugInfo], interpreter: Optional[str] = None) -> list[str]:
    """One line per object: path, debug info source, what reports show, and the fix."""
    debuginfod = bool(os.environ.get("DEBUGINFOD_URLS", "").strip())
    packages = _packages([r.path for r in records])
    lines = []
    for r in records:
        source, shows = _SOURCES.get(r.source, (r.source, "addresses"))
        if r.debug_file:
            source = f"{source} {r.debug_file}"
        role = " (interpreter)" if interpreter and _same_file(r.path, interpreter) else ""
        lines.append(f"{r.path}{role}: {source}; reports show {shows}; {_fix(r, packages.get(r.path), debuginfod)}")
    return lines


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _doctor_command(args: argparse.Namespace) -> int:
    for name in args.imports:
        try:
            importlib.import_module(name)
        except Exception as e:  # any import failure is bad input for this command
            _warn(f"heapgate doctor: cannot import {name}: {type(e).__name__}: {e}")
            return 2
    records = doctor(args.objects or None)
    urls = os.environ.get("DEBUGINFOD_URLS", "").strip()
    print(f"heapgate doctor: {len(records)} objects; interpreter {sys.executable} (Python {sys.version.split()[0]})")
    print(f"DEBUGINFOD_URLS: {urls or 'not set (no downloads)'}")
    for line in doctor_lines(records, sys.executable):
        print(line)
    return 0
