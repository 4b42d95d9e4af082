"""Cost of `--native-leaks` per test: the reachability scan with and without leak candidates.

    python3 benches/leak_scan_bench.py [--tests 40] [--repeat 3] [--json out.json]

Runs one pytest session per mode over generated tests that call a small C extension (built
here with gcc): half leave nothing allocated, half leak 64 blocks. Times each test's call
phase (`report.duration`, which includes heapgate's start, scan and stop) and prints the
median per kind of test and mode, with the scan's added cost against `--native` alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

C_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
static PyObject *work(PyObject *self, PyObject *args) {
    Py_ssize_t blocks, leak;
    if (!PyArg_ParseTuple(args, "nn", &blocks, &leak)) return NULL;
    for (Py_ssize_t i = 0; i < blocks; i++) {
        void *p = malloc(256);
        if (!leak) free(p);
    }
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {{"work", work, METH_VARARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "scanbench", NULL, -1, methods};
PyMODINIT_FUNC PyInit_scanbench(void) { return PyModule_Create(&module); }
"""

CONFTEST = """
import json, os
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
        ["gcc", "-shared", "-fPIC", "-O2", "-I", sysconfig.get_paths()["include"], "scanbench.c", "-o", f"scanbench{suffix}"],
        cwd=workdir,
        check=True,
    )


def write_tests(workdir: Path, n: int) -> None:
    lines = ["import scanbench", ""]
    for i in range(n):
        leak = i % 2
        lines += [f"def test_{'leaky' if leak else 'clean'}_{i}():", f"    scanbench.work(64, {leak})", ""]
    (workdir / "test_scan.py").write_text("\n".join(lines))
    (workdir / "conftest.py").write_text(textwrap.dedent(CONFTEST))


def run_mode(workdir: Path, args: list[str]) -> dict[str, float]:
    out = workdir / "durations.json"
    env = {**__import__("os").environ, "SCAN_BENCH_OUT": str(out), "PYTHONPATH": str(workdir)}
    # The limit is high: every test passes, so only the scan's cost is measured.
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging", *args, "test_scan.py"],
        cwd=workdir,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {m: {"clean": [], "leaky": []} for m in MODES}
    with tempfile.TemporaryDirectory(prefix="heapgate-scan-bench-") as tmp:
        workdir = Path(tmp)
        build(workdir)
        write_tests(workdir, args.tests)
        for _ in range(args.repeat):
            for mode, mode_args in MODES.items():
                for nodeid, seconds in run_mode(workdir, mode_args).items():
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
    if args.json:
        args.json.write_text(json.dumps({"tests": args.tests, "repeat": args.repeat, "median_ms": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
