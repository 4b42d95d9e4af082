#!/usr/bin/env python3
"""Max RSS of a long pytest session: does heapgate's memory grow with the number of tests?

    python benches/rss_bench.py [--tests 10000] [--modes plain,heapgate,heapgate-native,native-leaks]

Run it with the interpreter that has heapgate installed. It writes a synthetic test module of
--tests tests into a temporary directory (each test allocates from some 240 sites: sixty
helpers on two call paths), runs one pytest session
per mode there and prints each session's maximum resident set size (the kernel's ru_maxrss of
the pytest process) and its ratio to plain pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "plain": ["-p", "no:heapgate"],
    "heapgate": ["--heapgate"],
    "heapgate-native": ["--heapgate", "--heapgate-native"],
    # Every test scanned for native leaks (the scans' own buffers must not pile up either).
    "native-leaks": ["--native-leaks"],
}

# Sixty helpers, each allocating on its own lines, reached through two call paths: a test has
# some 240 allocation sites (as a test of a real library does), so a full result per test is
# tens of kilobytes.
HELPERS = 60


def write_suite(directory: Path, tests: int) -> None:
    body = []
    for h in range(HELPERS):
        body.append(
            f"def helper_{h}(i):\n"
            f"    rows = [{{'i': i, 'h': {h}}} for _ in range(3)]\n"
            f"    rows.append([i] * {h + 1})\n"
            f"    return rows\n"
        )
    body.append("def path_a(i):\n    return [helper(i) for helper in HELPERS]\n")
    body.append("def path_b(i):\n    return path_a(i) + [helper(i) for helper in HELPERS]\n")
    body.append(f"HELPERS = [{', '.join(f'helper_{h}' for h in range(HELPERS))}]\n")
    for i in range(tests):
        body.append(f"def test_{i}():\n    assert path_b({i})\n")
    (directory / "test_many.py").write_text("\n".join(body))
    (directory / "pytest.ini").write_text("[pytest]\n")


def run(directory: Path, mode: str) -> tuple[int, float, int]:
    """(max RSS in KiB, wall seconds, exit status) of one session."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODES[mode], "test_many.py"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss, time.perf_counter() - t0, os.waitstatus_to_exitcode(status)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", type=int, default=10_000, help="tests in the session (default 10000)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if "plain" in modes:  # first: the others' ratios are to it
        modes = ["plain"] + [m for m in modes if m != "plain"]
    if "plain" not in modes or any(m not in MODES for m in modes):
        ap.error(f"modes must include plain and be among {list(MODES)}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="heapgate-rss-") as tmp:
        write_suite(Path(tmp), args.tests)
        results = {}
        for mode in modes:
            rss, wall, code = run(Path(tmp), mode)
            results[mode] = rss
            failed |= code != 0
            print(f"{mode:16s} max RSS {rss / 1024:8.1f} MiB  {rss / results['plain']:5.2f}x plain"
                  f"  ({wall:6.1f} s, exit {code})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
