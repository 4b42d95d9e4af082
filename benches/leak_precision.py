#!/usr/bin/env python3
"""How exact --native-leaks is across fresh processes (issue 11, items 2 and 4): each run is a
new pytest process, so ASLR and the allocators lay memory out anew, and a stale word that
happens to name a leaked block's address can hide it from the conservative scan.

    python benches/leak_precision.py freelist [--runs 40]   # tests/test_leaks.py's free-list session
    python benches/leak_precision.py same     [--runs 10]   # one leak's lost bytes, run to run
    (add --vary-layout to give each pair of runs an environment of another size)
    python benches/leak_precision.py collect  [--runs 10]   # tests/test_leak_collect.py's session

Run it with the interpreter that has heapgate installed (`--python` to name another one). Half
the runs add `-p no:logging`. `freelist` counts the (type, process) pairs whose five leaked
objects are not all reported (missed) or are over-counted; `same` prints the lost bytes of each
run; `collect` counts the runs where each leaked 4096-byte buffer is definitely lost.
Set CI=true in the environment to get pytest's CI output (longer lines, other allocations).
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def constant(path: Path, name: str) -> Any:
    """A module-level constant of a test file (the inner sessions live there)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{name} not found in {path}")


def build(python: str, source: Path, out_dir: Path) -> None:
    info = json.loads(
        subprocess.run(
            [python, "-c", "import json,sysconfig;print(json.dumps([sysconfig.get_paths()['include'],"
             "sysconfig.get_config_var('EXT_SUFFIX')]))"],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    include, suffix = info
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-pthread", "-g", "-O0", "-I", include, str(source),
         "-o", str(out_dir / f"{source.stem}{suffix}")],
        check=True,
    )


def session(python: str, cwd: Path, logging: bool, *extra: str, pad: int = 0) -> str:
    args = [python, "-m", "pytest", "-p", "no:cacheprovider", "--native-leaks", *extra]
    if not logging:
        args += ["-p", "no:logging"]
    path = [str(cwd / "ext"), *filter(None, [os.environ.get("PYTHONPATH")])]
    # As the test suite's inner sessions run (tests/conftest.py): no other plugin installed.
    addopts = " ".join(f"-p no:{name}" for name in constant(TESTS / "conftest.py", "OTHER_PLUGINS"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTEST_ADDOPTS=addopts)
    if pad:
        # The environment's size moves the process's first stack and heap contents: runs with
        # different sizes sample layouts that address randomisation alone may repeat.
        env["HEAPGATE_BENCH_PAD"] = "x" * pad
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300).stdout


def section_kinds(text: str, test: str) -> dict[str, int] | None:
    parts = text.split(f"_ {test} _", 1)
    if len(parts) < 2:
        return None
    section = parts[1].split("\n___", 1)[0]
    found = {}
    for kind in ("definitely lost", "indirectly lost", "possibly lost"):
        m = re.search(rf"{kind}[^:]*: (\d+) bytes", section)
        found[kind] = int(m.group(1)) if m else 0
    return found


def freelist(python: str, work: Path, runs: int, vary: bool = False) -> None:
    (work / "test_free_lists.py").write_text(constant(TESTS / "test_leaks.py", "FREE_LIST_TESTS"))
    misses: collections.Counter[str] = collections.Counter()
    over: collections.Counter[str] = collections.Counter()
    per_run = []
    for i in range(runs):
        logging = i % 2 == 0
        text = session(python, work, logging, pad=pad_for(i, vary))
        sizes = json.loads((work / "sizes.json").read_text())
        row = {}
        for kind, size in sizes.items():
            found = section_kinds(text, f"test_leak[{kind}]")
            total = sum(found.values()) if found else 0
            row[kind] = total // size if total % size == 0 else total / size
            if total < 5 * size:
                misses[kind] += 1
            elif total > 5 * size:
                over[kind] += 1
        per_run.append(row)
        print(f"run {i:2} logging={'on ' if logging else 'off'} objects found: {row}", flush=True)
    pairs = runs * 4
    print(f"missed (type, process) pairs: {sum(misses.values())} of {pairs} {dict(misses)}")
    print(f"over-counted pairs: {sum(over.values())} of {pairs} {dict(over)}")


SAME_TEST = """
import hgleak

def test_leaks():
    hgleak.leak_malloc(4096)
    hgleak.leak_list(10, 100)
    hgleak.leak_objects("list", 50)
    hgleak.leak_objects("dict", 50)
    hgleak.leak_objects("tuple", 50)
    hgleak.leak_objects("float", 50)
    hgleak.leak_pyobjects(100)
"""


def pad_for(run: int, vary: bool) -> int:
    """The padding of run `run` (see `session`): 0..36 bytes in steps of 4 when `vary`."""
    return 4 * ((run // 2) % 10) if vary else 0


def same(python: str, work: Path, runs: int, vary: bool = False) -> None:
    (work / "test_same.py").write_text(SAME_TEST)
    totals = []
    for i in range(runs):
        text = session(python, work, i % 2 == 0, pad=pad_for(i, vary))
        found = section_kinds(text, "test_leaks")
        totals.append(sum(found.values()) if found else 0)
        print(f"run {i:2} {found}", flush=True)
    print(f"lost bytes: {totals}; distinct: {sorted(set(totals))}")


def collect(python: str, work: Path, runs: int) -> None:
    (work / "test_cycles.py").write_text(constant(TESTS / "test_leak_collect.py", "TESTS"))
    definitely: collections.Counter[str] = collections.Counter()
    for i in range(runs):
        text = session(python, work, False, "-v")
        row = {}
        for test in ("test_leak_behind_a_promoted_cycle", "test_leak_held_only_by_old_garbage"):
            found = section_kinds(text, test) or {}
            row[test] = found
            if found.get("definitely lost") == 4096:
                definitely[test] += 1
        print(f"run {i:2} {row}", flush=True)
    print(f"definitely lost 4096 bytes, runs of {runs}: {dict(definitely)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["freelist", "same", "collect"])
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--vary-layout", action="store_true",
        help="give each pair of runs an environment of another size (HEAPGATE_BENCH_PAD), so the "
        "runs sample more stack and heap layouts",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heapgate-precision-") as tmp:
        work = Path(tmp)
        (work / "ext").mkdir()
        build(args.python, TESTS / "csrc" / "hgleak.c", work / "ext")
        build(args.python, TESTS / "csrc" / "hgcycle.c", work / "ext")
        if args.what == "freelist":
            freelist(args.python, work, args.runs or 40, args.vary_layout)
        elif args.what == "same":
            same(args.python, work, args.runs or 10, args.vary_layout)
        else:
            collect(args.python, work, args.runs or 10)


if __name__ == "__main__":
    main()
