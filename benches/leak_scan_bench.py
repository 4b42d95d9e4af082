"""Cost of `--native-leaks`: the reachability scan per test, and on whole suites.

    python3 benches/leak_scan_bench.py [--tests 40] [--suite 300] [--repeat 3] [--json out.json]

Runs pytest sessions over generated tests that call a small C extension (built here with
gcc): half leave nothing allocated, half leak 64 blocks. Three cases, each mode in turn:

- small process: times each test's call phase (`report.duration`, which includes heapgate's
  start, scan and stop) and prints the median per kind of test and mode, with the scan's
  added cost against `--native` alone;
- big process: the same tests after the session's conftest made the process big — 2 million
  live Python objects, and 512 MiB that glibc keeps mapped but free (freed below a block that
  stays, so it cannot be trimmed);
- suite: the wall and CPU time of a whole session of `--suite` tests, against plain pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

C_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>
static PyObject *work(PyObject *self, PyObject *args) {
    Py_ssize_t blocks, leak;
    if (!PyArg_ParseTuple(args, "nn", &blocks, &leak)) return NULL;
    for (Py_ssize_t i = 0; i < blocks; i++) {
        void *p = malloc(256);
        if (!leak) free(p);
    }
    Py_RETURN_NONE;
}
/* Leave `mib` MiB free but mapped in glibc's main heap: 100 KiB blocks (below the mmap
 * threshold) freed under one block that stays, so the heap cannot shrink. */
static void *pinned = NULL;
static PyObject *hold_free(PyObject *self, PyObject *args) {
    Py_ssize_t mib;
    if (!PyArg_ParseTuple(args, "n", &mib)) return NULL;
    Py_ssize_t n = mib * 1024 / 100;
    void **blocks = malloc(n * sizeof(void *));
    for (Py_ssize_t i = 0; i < n; i++) {
        blocks[i] = malloc(100 * 1024);
        memset(blocks[i], 0x5a, 100 * 1024);
    }
    pinned = malloc(64);
    for (Py_ssize_t i = 0; i < n; i++) free(blocks[i]);
    free(blocks);
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {
    {"work", work, METH_VARARGS, ""}, {"hold_free", hold_free, METH_VARARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "scanbench", NULL, -1, methods};
PyMODINIT_FUNC PyInit_scanbench(void) { return PyModule_Create(&module); }
"""

CONFTEST = """
import json, os
if os.environ.get("SCAN_BENCH_BIG"):
    import scanbench
    KEPT = [[i] for i in range(2_000_000)]
    scanbench.hold_free(512)
durations = {}
def pytest_runtest_logreport(report):
    if report.when == "call":
        durations[report.nodeid] = report.duration
def pytest_sessionfinish(session):
    with open(os.environ["SCAN_BENCH_OUT"], "w") as f:
        json.dump(durations, f)
"""

MODES = {
    "plain": ["-p", "no:heapgate"],
    "tracked (--heapgate --native)": ["--heapgate", "--native"],
    "scanned (--native-leaks)": ["--native-leaks=1GiB"],
}


def build(workdir: Path) -> None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (workdir / "scanbench.c").write_text(C_SOURCE)
    subprocess.run(
        # -fno-builtin: without it gcc drops a malloc whose block is never used (the leak).
        ["gcc", "-shared", "-fPIC", "-O2", "-fno-builtin", "-I", sysconfig.get_paths()["include"], "scanbench.c", "-o", f"scanbench{suffix}"],
        cwd=workdir,
        check=True,
    )


def write_tests(workdir: Path, n: int, name: str = "test_scan.py") -> None:
    lines = ["import scanbench", ""]
    for i in range(n):
        leak = i % 2
        lines += [f"def test_{'leaky' if leak else 'clean'}_{i}():", f"    scanbench.work(64, {leak})", ""]
    (workdir / name).write_text("\n".join(lines))
    (workdir / "conftest.py").write_text(textwrap.dedent(CONFTEST))


def run_mode(workdir: Path, args: list[str], tests: str = "test_scan.py", big: bool = False) -> tuple[dict[str, float], float, float]:
    """Call-phase durations per test, the session's wall time and its CPU time (user and
    system: on a machine shared with other work, wall time varies by tens of percent)."""
    out = workdir / "durations.json"
    env = {**os.environ, "SCAN_BENCH_OUT": str(out), "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(workdir)]))}
    if big:
        env["SCAN_BENCH_BIG"] = "1"
    # The limit is high: every test passes, so only the scan's cost is measured.
    started, cpu_before = time.perf_counter(), children_cpu()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging", *args, tests],
        cwd=workdir,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return json.loads(out.read_text()), time.perf_counter() - started, children_cpu() - cpu_before


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_test(workdir: Path, repeat: int, big: bool) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, list[float]]] = {m: {"clean": [], "leaky": []} for m in MODES}
    for _ in range(repeat):
        for mode, mode_args in MODES.items():
            for nodeid, seconds in run_mode(workdir, mode_args, big=big)[0].items():
                kind = "leaky" if "leaky" in nodeid else "clean"
                results[mode][kind].append(seconds * 1e3)
    medians = {m: {k: statistics.median(v) for k, v in kinds.items()} for m, kinds in results.items()}
    print(f"{'mode':<32} {'clean test (ms)':>16} {'64 leaked blocks (ms)':>22}")
    for mode, kinds in medians.items():
        print(f"{mode:<32} {kinds['clean']:>16.2f} {kinds['leaky']:>22.2f}")
    tracked = medians["tracked (--heapgate --native)"]
    scanned = medians["scanned (--native-leaks)"]
    print(
        f"scan cost per test: {scanned['clean'] - tracked['clean']:.2f} ms without leak candidates, "
        f"{scanned['leaky'] - tracked['leaky']:.2f} ms with 64"
    )
    return medians


def suite(workdir: Path, repeat: int) -> dict[str, dict[str, float]]:
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    cpus: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(repeat):
        for mode, mode_args in MODES.items():
            _, wall, cpu = run_mode(workdir, mode_args, tests="test_suite.py")
            walls[mode].append(wall)
            cpus[mode].append(cpu)
    medians = {m: {"wall": statistics.median(walls[m]), "cpu": statistics.median(cpus[m])} for m in MODES}
    plain = medians["plain"]
    print(f"{'mode':<32} {'session wall (s)':>16} {'x plain':>8} {'CPU (s)':>8} {'x plain':>8}")
    for mode, m in medians.items():
        print(f"{mode:<32} {m['wall']:>16.2f} {m['wall'] / plain['wall']:>8.2f} {m['cpu']:>8.2f} {m['cpu'] / plain['cpu']:>8.2f}")
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=40)
    parser.add_argument("--suite", type=int, default=300, help="tests in the whole-suite case (0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, object] = {"tests": args.tests, "suite": args.suite, "repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="heapgate-scan-bench-") as tmp:
        workdir = Path(tmp)
        build(workdir)
        write_tests(workdir, args.tests)
        print("small process, per test:")
        report["small_ms"] = per_test(workdir, args.repeat, big=False)
        print("\nbig process (2M live objects, 512 MiB free but mapped), per test:")
        report["big_ms"] = per_test(workdir, args.repeat, big=True)
        if args.suite:
            write_tests(workdir, args.suite, name="test_suite.py")
            print(f"\nsuite of {args.suite} tests, whole session:")
            report["suite_s"] = suite(workdir, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
