#!/usr/bin/env python3
"""What heapgate costs a session that tracks nothing: the plugin installed, no marker, no flag,
against the same session with the plugin disabled (`-p no:heapgate`).

    python3 benches/untracked_bench.py [--repeat 15] [--tests 300] [--json out.json]

Both modes run the same generated suite (allocation-heavy Python tests, none marked) as real
pytest sessions with this interpreter, interleaved (A B, B A, A B, ...) so drift in machine load
hits both alike. It prints each mode's median wall time and median CPU time (user + system of
the pytest process: far less disturbed by other load on the machine than wall time), the
ratios heapgate/plain and the spread of each mode (a ratio within the spread is noise). The suite's last test asserts that
no hook was installed (`heapgate._native.hooks_installed()`), so the session it times is one
where heapgate patched nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "plain": ["-p", "no:heapgate"],
    "heapgate": [],
}

TEST = """
def test_{i}():
    rows = [{{"id": n, "name": str(n), "tags": [n, n + 1]}} for n in range(2000)]
    blobs = [bytearray(256) for _ in range(500)]
    text = ",".join(r["name"] for r in rows)
    assert len(rows) == 2000 and len(blobs) == 500 and text
"""

LAST = """
def test_zz_no_hook_was_installed():
    from heapgate import _native
    assert not _native.hooks_installed()
"""


def write_suite(directory: Path, tests: int) -> None:
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "test_untracked.py").write_text("".join(TEST.format(i=i) for i in range(tests)) + LAST)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def session(directory: Path, flags: list[str], timeout: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one pytest session."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *flags, "test_untracked.py"]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    cpu = children_cpu()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=directory, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    cpu = children_cpu() - cpu
    if done.returncode != 0:
        sys.exit(f"session failed ({' '.join(cmd)}):\n{done.stdout}\n{done.stderr}")
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="sessions per mode (default 15)")
    parser.add_argument("--tests", type=int, default=300, help="tests in the suite (default 300)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per session")
    parser.add_argument("--json", type=Path, help="write every time, the medians and the ratio here")
    args = parser.parse_args()
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="heapgate-untracked-") as tmp:
        directory = Path(tmp)
        write_suite(directory, args.tests)
        for mode in MODES:  # warm the page cache and imports once, untimed
            session(directory, MODES[mode], args.timeout)
        for r in range(args.repeat):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            for mode in order:
                wall, cpu = session(directory, MODES[mode], args.timeout)
                times[mode].append(wall)
                cpus[mode].append(cpu)
    print(f"{args.tests + 1} untracked tests, {args.repeat} interleaved sessions per mode, python {sys.version.split()[0]}")
    result: dict[str, object] = {"tests": args.tests, "repeat": args.repeat, "wall": times, "cpu": cpus}
    for label, samples in (("wall", times), ("cpu", cpus)):
        medians = {mode: statistics.median(t) for mode, t in samples.items()}
        ratio = medians["heapgate"] / medians["plain"]
        for mode, t in samples.items():
            print(f"  {label:4} {mode:9} median {medians[mode]:.3f}s  min {min(t):.3f}s  max {max(t):.3f}s")
        plain = samples["plain"]
        spread = (max(plain) - min(plain)) / medians["plain"]
        print(f"  {label:4} ratio heapgate/plain {ratio:.3f} (plain's own spread: {spread:.1%} of its median)")
        result[f"{label}_medians"] = medians
        result[f"{label}_ratio"] = ratio
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
