#!/usr/bin/env python3
"""Wall time of allocation-heavy pytest tests: untracked, tracked by heapgate, tracked by
pytest-memray (Python-only, --native, and --native --trace-python-allocators).

    python benches/alloc_bench.py [--repeat 5] [--json out.json]

Run it with the interpreter that has heapgate installed (e.g. the checkout's .venv). See
benches/README.md for what each mode and number means. Everything runs as real pytest sessions
in a virtualenv this script creates (benches/.venv, with pytest-memray installed there and
nowhere else) on a snapshot of that heapgate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_VENV = HERE / ".venv"
# The version the numbers in README.md were measured with; only ever installed in the venv.
MEMRAY_REQUIREMENT = "pytest-memray==1.11.0"

# mode name -> pytest arguments. Each mode disables the other tracker, so one session is
# measured by one of them. pytest-memray is installed in the benchmark venv, so heapgate's
# options go by their namespaced names there (it leaves memray's bare names to memray).
MODES: dict[str, list[str]] = {
    "plain": ["-p", "no:heapgate", "-p", "no:memray"],
    "heapgate": ["-p", "no:memray", "--heapgate", "--heapgate-most-allocations=0"],
    # Only where the installed heapgate has native stacks; see heapgate_has_native.
    "heapgate-native": ["-p", "no:memray", "--heapgate", "--heapgate-native", "--heapgate-most-allocations=0"],
    "memray": ["-p", "no:heapgate", "--memray", "--most-allocations=0"],
    "memray-native": ["-p", "no:heapgate", "--memray", "--native", "--most-allocations=0"],
    "memray-full": [
        "-p", "no:heapgate", "--memray", "--native", "--trace-python-allocators",
        "--most-allocations=0",
    ],
}

WORKLOADS = {
    "test_python_bytearray": "(a) Python: 1,000,000 x bytearray(64)",
    "test_c_malloc_free": "(b) C: 1,000,000 x malloc(64)/free",
    "test_mixed_dicts": "(c) mixed: list of 200,000 small dicts, dropped",
    "test_python_bytearray_kept": "(d) as (a), all kept in a list, dropped",
}
WARMUP = "test_0_warmup"

RATIOS = [
    ("heapgate", "plain"),
    ("memray", "plain"),
    ("memray-native", "plain"),
    ("memray-full", "plain"),
    ("heapgate", "memray"),
    ("heapgate", "memray-native"),
    ("heapgate", "memray-full"),
    ("heapgate-native", "plain"),
    ("heapgate-native", "memray-native"),
    ("heapgate-native", "memray-full"),
]


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_venv(venv: Path) -> Path:
    """The benchmark's own interpreter: a virtualenv with pytest (the running interpreter's
    version), numpy and pytest-memray. heapgate is not installed there: every session imports
    the snapshot that snapshot_heapgate makes."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import memray, pytest_memray, numpy, pytest"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    log(f"creating benchmark virtualenv {venv} (pytest, numpy, {MEMRAY_REQUIREMENT})")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    from importlib.metadata import version

    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"pytest=={version('pytest')}", "numpy",
         MEMRAY_REQUIREMENT],
        check=True,
    )
    r = subprocess.run(probe, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"benchmark venv is unusable: {r.stderr.strip()}")
    return python


def snapshot_heapgate(dest: Path) -> tuple[dict[str, str], str]:
    """Copies the heapgate that the running interpreter imports (Python files, the built
    _native, and its distribution metadata, whose pytest11 entry point loads the plugin) into
    dest and returns an environment that puts dest on sys.path. The editable install may be
    rebuilt while the benchmark runs; every session uses this one copy."""
    import heapgate

    src = Path(heapgate.__file__).parent
    shutil.copytree(src, dest / "heapgate", ignore=shutil.ignore_patterns("__pycache__"))
    from importlib.metadata import distribution

    dist = distribution("pytest-heapgate")
    info = dest / f"pytest_heapgate-{dist.version}.dist-info"
    info.mkdir()
    for name in ("METADATA", "entry_points.txt"):
        text = dist.read_text(name)
        if text is None:
            sys.exit(f"pytest-heapgate's {name} is missing; reinstall it (pip install -e .)")
        (info / name).write_text(text)
    path = os.pathsep.join(filter(None, [str(dest), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1"), str(src)


def versions(python: Path, env: dict[str, str]) -> dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m, heapgate\n"
        "print(json.dumps({'python': sys.version.split()[0],\n"
        "  'pytest': m.version('pytest'), 'pytest-heapgate': m.version('pytest-heapgate'),\n"
        "  'heapgate_path': heapgate.__file__,\n"
        "  'pytest-memray': m.version('pytest-memray'), 'memray': m.version('memray')}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    info: dict[str, str] = json.loads(out.stdout)
    commit = heapgate_commit()
    if commit:
        info["heapgate_commit"] = commit
    return info


def heapgate_commit() -> str | None:
    """The checkout's short commit, "+dirty" if its tracked files changed; None outside git."""
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if rev.returncode != 0:
        return None
    dirty = subprocess.run(
        # --no-optional-locks: read only, never refresh the index of a repo others work in.
        ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain",
         "--untracked-files=no"],
        capture_output=True, text=True,
    ).stdout.strip()
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def native_hash(python: Path, env: dict[str, str]) -> str:
    """Short sha256 of the heapgate._native the sessions import: which build was measured."""
    code = ("import hashlib, heapgate._native as n; "
            "print(hashlib.sha256(open(n.__file__, 'rb').read()).hexdigest()[:16])")
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          check=True, env=env).stdout.strip()


def heapgate_has_native(python: Path, env: dict[str, str]) -> bool:
    """Whether the installed heapgate records native stacks (--heapgate-native)."""
    r = subprocess.run([str(python), "-m", "pytest", "-p", "no:memray", "-p", "no:cacheprovider",
                        "--help"], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                       env=env)
    return re.search(r"^\s+--heapgate-native\b", r.stdout, re.M) is not None


def build_suite(python: Path, workdir: Path) -> None:
    """Copies the tests and conftest into workdir and compiles the C extension there."""
    shutil.copy(HERE / "workloads.py", workdir / "test_workloads.py")
    shutil.copy(HERE / "bench_conftest.py", workdir / "conftest.py")
    # An ini file of its own, so the repository's pytest settings (addopts, filterwarnings)
    # do not apply and rootdir is the temporary directory.
    (workdir / "pytest.ini").write_text("[pytest]\n")
    # Headers and suffix of the venv's interpreter (the same CPython as the system one).
    code = (
        "import sysconfig, json; print(json.dumps([sysconfig.get_paths()['include'],"
        " sysconfig.get_config_var('EXT_SUFFIX')]))"
    )
    include, suffix = json.loads(
        subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    )
    subprocess.run(
        [
            "gcc", "-shared", "-fPIC", "-O2", "-I", include,
            str(HERE / "cmalloc.c"), "-o", str(workdir / f"cmalloc{suffix}"),
        ],
        check=True,
    )


_HG_ROW = re.compile(r"^\s*(\S+)\s+(\d+)\s+\S+\s+\S+\s+test_workloads\.py::(\w+)", re.M)
_MR_HEAD = re.compile(r"Allocation results for test_workloads\.py::(\w+) at the high watermark")
_MR_PEAK = re.compile(r"Total memory allocated: (\S+)")


def tracker_reports(mode: str, stdout: str) -> dict[str, dict[str, Any]]:
    """What each tracker printed about each test in its end-of-session summary: a check that
    it really recorded the workload. heapgate: peak and number of allocations during the call;
    pytest-memray: peak ("Total memory allocated" at its high watermark)."""
    seen: dict[str, dict[str, Any]] = {}
    if mode.startswith("heapgate"):
        for m in _HG_ROW.finditer(stdout):
            seen[m.group(3)] = {"peak": m.group(1), "allocations": int(m.group(2))}
    elif mode.startswith("memray"):
        for m in _MR_HEAD.finditer(stdout):
            t = _MR_PEAK.search(stdout, m.end())
            if t:
                seen[m.group(1)] = {"peak": t.group(1)}
    return seen


def run_once(python: Path, workdir: Path, env: dict[str, str], mode: str, timeout: float) -> dict[str, Any]:
    out = workdir / f"result-{mode}.json"
    if out.exists():
        out.unlink()
    cmd = [
        str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODES[mode],
        "test_workloads.py",
    ]
    env = dict(env, HEAPGATE_BENCH_OUT=str(out))
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        return {
            "mode": mode, "ok": False, "command": " ".join(cmd), "error": f"timeout after {timeout}s",
            "stdout": (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""),
        }
    wall = time.perf_counter() - t0
    result = {"mode": mode, "command": " ".join(cmd), "returncode": r.returncode, "session_s": wall}
    tests = json.loads(out.read_text()) if out.exists() else []
    failed = [t["test"] for t in tests if t["outcome"] != "passed"]
    if r.returncode != 0 or failed or len(tests) != len(WORKLOADS) + 1:
        result.update(ok=False, error=f"exit {r.returncode}, failed {failed}, "
                      f"{len(tests)} call reports", stdout=r.stdout[-4000:], stderr=r.stderr[-4000:])
        return result
    result.update(ok=True, tests={t["test"]: t for t in tests}, seen=tracker_reports(mode, r.stdout))
    return result


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float) -> str:
    return f"{x * 1000:9.1f}" if x == x else "        -"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="pytest sessions per mode (default 5)")
    ap.add_argument("--json", type=Path, help="write all results and medians here as JSON")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"benchmark virtualenv (default {DEFAULT_VENV})")
    ap.add_argument("--modes", default=None,
                    help=f"comma-separated subset of {','.join(MODES)} (default: all; "
                    "heapgate-native only if the installed heapgate has --native)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before one pytest session counts as hung")
    args = ap.parse_args()
    python = ensure_venv(args.venv)
    tmp = tempfile.TemporaryDirectory(prefix="heapgate-bench-")
    workdir = Path(tmp.name)
    env, heapgate_source = snapshot_heapgate(workdir / "snapshot")
    if args.modes is None:
        modes = [m for m in MODES if m != "heapgate-native" or heapgate_has_native(python, env)]
    else:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or "plain" not in modes:
        ap.error(f"modes must include plain and be among {list(MODES)}; got {modes}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    info = versions(python, env)
    info["heapgate_native_sha256"] = native_hash(python, env)
    info["heapgate_snapshot_of"] = heapgate_source
    log(f"interpreter {python} (Python {info['python']}), pytest {info['pytest']}, "
        f"pytest-heapgate {info['pytest-heapgate']} ({info.get('heapgate_commit', '?')}, "
        f"_native sha256 {info['heapgate_native_sha256']}, copied from {heapgate_source} to "
        f"{info['heapgate_path']}), pytest-memray {info['pytest-memray']}, memray {info['memray']}")

    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    with tmp:
        (workdir / "suite").mkdir()
        build_suite(python, workdir / "suite")
        for rep in range(args.repeat):
            # Rotate the order every repetition so no mode always runs first or last.
            order = modes[rep % len(modes):] + modes[: rep % len(modes)]
            for mode in order:
                res = run_once(python, workdir / "suite", env, mode, args.timeout)
                res["repetition"] = rep
                runs.append(res)
                if res["ok"]:
                    t = res["tests"]
                    log(f"  rep {rep + 1}/{args.repeat} {mode:14s} "
                        + " ".join(f"{w[5:]}={t[w]['loop_s'] * 1000:.0f}ms" for w in WORKLOADS)
                        + f"  (session {res['session_s']:.1f}s)")
                else:
                    problems.append(res)
                    log(f"  rep {rep + 1}/{args.repeat} {mode:14s} FAILED: {res['error']}\n"
                        f"    command: {res['command']}\n"
                        + "\n".join("    | " + l for l in (res.get("stdout", "") + res.get("stderr", "")).splitlines()[-30:]))

    # Medians per mode and workload, of the loop time and of the call phase's duration.
    summary: dict[str, dict[str, Any]] = {}
    for mode in modes:
        ok = [r for r in runs if r["mode"] == mode and r["ok"]]
        per: dict[str, dict[str, Any]] = {}
        for w in [WARMUP, *WORKLOADS]:
            loops = [r["tests"][w]["loop_s"] for r in ok]
            calls = [r["tests"][w]["call_s"] for r in ok]
            allocs = [r["seen"][w]["allocations"] for r in ok if "allocations" in r["seen"].get(w, {})]
            peaks = sorted({r["seen"][w]["peak"] for r in ok if w in r["seen"]})
            per[w] = {
                "n": len(ok), "loop_median_s": median(loops), "call_median_s": median(calls),
                "loop_s": loops, "call_s": calls,
                "tracker_peaks": peaks, "tracker_allocations": allocs,
            }
        summary[mode] = per

    ratios: dict[str, dict[str, Any]] = {}
    for w in WORKLOADS:
        ratios[w] = {}
        for a, b in RATIOS:
            if a in summary and b in summary:
                for kind in ("loop", "call"):
                    x, y = summary[a][w][f"{kind}_median_s"], summary[b][w][f"{kind}_median_s"]
                    ratios[w][f"{a}/{b} ({kind})"] = x / y if y else float("nan")

    # Overhead per allocation event, using heapgate's own count of allocations in the test.
    per_alloc: dict[str, dict[str, Any]] = {}
    for w in WORKLOADS:
        hg_counts = [n for m in modes if m.startswith("heapgate")
                     for n in summary[m][w]["tracker_allocations"]]
        if not hg_counts:
            continue
        seen = int(median(hg_counts))
        per_alloc[w] = {"allocations_seen_by_heapgate": seen}
        for mode in modes:
            if mode == "plain":
                continue
            extra = summary[mode][w]["loop_median_s"] - summary["plain"][w]["loop_median_s"]
            per_alloc[w][f"{mode}_ns_per_alloc"] = extra / seen * 1e9

    # ---- the table
    width = 17
    log("")
    load_after = os.getloadavg()
    log(f"heapgate allocation benchmark, {started:%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs, "
        f"{platform.machine()} {platform.system()} {platform.release()}, median of {args.repeat}")
    log(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        "(other work on the machine inflates and spreads the times)")
    log("times in ms: 'loop' = time.perf_counter() around the workload inside the test; "
        "'call' = pytest's call-phase report.duration (adds tracker start/stop)")
    head = f"{'workload':48s} {'':5s}" + "".join(f"{m:>{width}s}" for m in modes)
    log(head)
    log("-" * len(head))
    for w, label in [*WORKLOADS.items(), (WARMUP, "first test of the session (warm-up, tiny)")]:
        for kind in ("loop", "call"):
            row = f"{label if kind == 'loop' else '':48s} {kind:5s}"
            row += "".join(f"{fmt_s(summary[m][w][f'{kind}_median_s']):>{width}s}" for m in modes)
            log(row)
    log("")
    ratio_names = [f"{a}/{b}" for a, b in RATIOS if a in summary and b in summary]
    tags = {w: WORKLOADS[w][:3] for w in WORKLOADS}  # "(a)", "(b)", ...
    log("ratios of medians: loop (call)")
    log(f"{'':32s}" + "".join(f"{tags[w]:>20s}" for w in WORKLOADS))
    for n in ratio_names:
        log(f"  {n:30s}" + "".join(
            f"{ratios[w][n + ' (loop)']:9.2f}x ({ratios[w][n + ' (call)']:6.2f}x)" for w in WORKLOADS))
    if per_alloc:
        log("")
        log("added loop time per allocation event, ns = (mode loop - plain loop) / allocations "
            "heapgate counted in the test")
        log(f"{'':32s}" + "".join(f"{tags[w]:>12s}" for w in per_alloc))
        log(f"  {'allocation events':30s}" + "".join(
            f"{d['allocations_seen_by_heapgate']:>12d}" for d in per_alloc.values()))
        for mode in modes:
            if mode == "plain":
                continue
            log(f"  {mode:30s}" + "".join(
                f"{d[mode + '_ns_per_alloc']:>12.0f}" for d in per_alloc.values()))
    log("")
    log("peak each tracker reported per test (distinct values over the repetitions; "
        "heapgate counts pymalloc objects, memray without --trace-python-allocators does not)")
    for mode in modes:
        if mode == "plain":
            continue
        log(f"  {mode:16s} " + "  ".join(
            f"{w[5:]}={'/'.join(summary[mode][w]['tracker_peaks']) or '-'}" for w in WORKLOADS))

    if problems:
        log("")
        log(f"{len(problems)} session(s) failed; see above and the JSON's 'problems'.")

    if args.json:
        doc = {
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "processor": platform.machine(),
                        "loadavg_before": load_before, "loadavg_after": load_after},
            "versions": info,
            "repeat": args.repeat,
            "modes": {m: MODES[m] for m in modes},
            "workloads": WORKLOADS,
            "timing": {
                "loop": "time.perf_counter() around the allocation loop inside the test",
                "call": "pytest call-phase report.duration (test call plus the tracker's start/stop)",
            },
            "medians": summary,
            "ratios": ratios,
            "per_allocation": per_alloc,
            "runs": [{k: v for k, v in r.items() if k not in ("stdout", "stderr")} for r in runs],
            "problems": problems,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
