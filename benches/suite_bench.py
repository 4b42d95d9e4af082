#!/usr/bin/env python3
"""A realistic suite under plain pytest, every heapgate mode and pytest-memray's matching
modes, sessions interleaved in one run, medians of --repeat sessions, overhead ratios.

    python benches/suite_bench.py [--repeat 5] [--json out.json] [--modes plain,heapgate,...]
    python benches/suite_bench.py --save-snapshot DIR        # keep this build for a later A/B
    python benches/suite_bench.py --baseline DIR [...]       # also run DIR's heapgate modes

Run it with the interpreter that has heapgate installed (e.g. the checkout's .venv). The
sessions run in benches/.venv (created on first use: pytest, numpy, pytest-memray; heapgate is
never installed there, a frozen snapshot of the running interpreter's heapgate is put on its
path). The tests are suite_tests.py; see benches/README.md for what is timed and printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alloc_bench import DEFAULT_VENV, HERE, ensure_venv, heapgate_commit, native_hash, snapshot_heapgate, versions  # noqa: E402

FLAT = ["--heapgate-most-allocations=0"]
# mode -> pytest arguments; each mode disables the other tracker.
MODES: dict[str, list[str]] = {
    "plain": ["-p", "no:heapgate", "-p", "no:memray"],
    "heapgate": ["-p", "no:memray", "--heapgate", *FLAT],
    "heapgate-native": ["-p", "no:memray", "--heapgate", "--heapgate-native", *FLAT],
    "heapgate-native-leaks": ["-p", "no:memray", "--heapgate", "--native-leaks", *FLAT],
    "memray": ["-p", "no:heapgate", "--memray", "--most-allocations=0"],
    "memray-python": ["-p", "no:heapgate", "--memray", "--trace-python-allocators", "--most-allocations=0"],
    "memray-full": [
        "-p", "no:heapgate", "--memray", "--native", "--trace-python-allocators", "--most-allocations=0",
    ],
}
# (heapgate mode, memray mode it is compared with, the target ratio of overheads)
COMPARISONS = [
    ("heapgate", "memray", 1.0),
    ("heapgate", "memray-python", None),
    ("heapgate-native", "memray-full", 0.5),
    ("heapgate-native-leaks", "memray-full", None),
]
WARMUP = "test_00_warmup"
# Modes of the --baseline build are these names with this prefix.
BASELINE = "before:"
C_BLOCKS = 2_097_152
_HG_ROW = re.compile(r"^\s*(\S+)\s+(\d+)\s+\S+\s+\S+\s+test_suite\.py::(\w+)", re.M)


def log(msg: str) -> None:
    print(msg, flush=True)


def build_suite(python: Path, workdir: Path) -> list[str]:
    """The suite in workdir (tests, conftest, an empty pytest.ini, the cmalloc extension);
    returns the test names in file order."""
    import shutil

    shutil.copy(HERE / "suite_tests.py", workdir / "test_suite.py")
    shutil.copy(HERE / "bench_conftest.py", workdir / "conftest.py")
    (workdir / "pytest.ini").write_text("[pytest]\n")
    code = "import sysconfig, json; print(json.dumps([sysconfig.get_paths()['include'], sysconfig.get_config_var('EXT_SUFFIX')]))"
    include, suffix = json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-I", include, str(HERE / "cmalloc.c"), "-o", str(workdir / f"cmalloc{suffix}")], check=True)
    return re.findall(r"^def (test_\w+)", (HERE / "suite_tests.py").read_text(), re.M)


def run_once(python: Path, workdir: Path, env: dict[str, str], mode: str, tests: list[str], timeout: float) -> dict[str, Any]:
    out = workdir / f"result-{mode.replace(':', '-')}.json"
    out.unlink(missing_ok=True)
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODES[mode.removeprefix(BASELINE)], "test_suite.py"]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=workdir, env=dict(env, HEAPGATE_BENCH_OUT=str(out)), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "ok": False, "command": " ".join(cmd), "error": f"timeout after {timeout}s"}
    wall = time.perf_counter() - t0
    results = json.loads(out.read_text()) if out.exists() else []
    failed = [t["test"] for t in results if t["outcome"] != "passed"]
    res = {"mode": mode, "command": " ".join(cmd), "returncode": r.returncode, "session_s": wall}
    if r.returncode != 0 or failed or len(results) != len(tests):
        res.update(ok=False, error=f"exit {r.returncode}, failed {failed}, {len(results)} call reports",
                   output=(r.stdout + r.stderr)[-4000:])
        return res
    counts = {m.group(3): int(m.group(2)) for m in _HG_ROW.finditer(r.stdout)}
    res.update(ok=True, tests={t["test"]: t for t in results}, allocations=counts)
    return res


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="sessions per mode (default 5)")
    ap.add_argument("--json", type=Path, help="write every session's times and the medians here")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"benchmark virtualenv (default {DEFAULT_VENV})")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)} (plain is required)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a session counts as hung")
    ap.add_argument("--save-snapshot", type=Path, metavar="DIR",
                    help="copy the running interpreter's heapgate to DIR (for a later --baseline) and exit")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="a --save-snapshot directory: its heapgate modes run too, interleaved, as 'before:MODE'")
    args = ap.parse_args()
    if args.save_snapshot:
        if args.save_snapshot.exists():
            ap.error(f"--save-snapshot: {args.save_snapshot} already exists")
        snapshot_heapgate(args.save_snapshot)
        # Only heapgate and git are needed here: the running interpreter may lack pytest-memray.
        commit = heapgate_commit() or "?"
        (args.save_snapshot / "COMMIT").write_text(commit + "\n")
        log(f"saved heapgate {commit} to {args.save_snapshot}")
        return 0
    if args.baseline and not (args.baseline / "heapgate").is_dir():
        ap.error(f"--baseline: {args.baseline} holds no heapgate snapshot (make one with --save-snapshot)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "plain" not in modes or any(m not in MODES for m in modes):
        ap.error(f"modes must include plain and be among {list(MODES)}; got {modes}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    python = ensure_venv(args.venv)
    tmp = tempfile.TemporaryDirectory(prefix="heapgate-suite-")
    workdir = Path(tmp.name)
    env, source = snapshot_heapgate(workdir / "snapshot")
    info = versions(python, env)
    info["heapgate_native_sha256"] = native_hash(python, env)
    log(f"Python {info['python']}, pytest {info['pytest']}, heapgate {info.get('heapgate_commit', '?')} "
        f"(_native {info['heapgate_native_sha256']}, from {source}), pytest-memray {info['pytest-memray']}, memray {info['memray']}")
    envs = {m: env for m in modes}
    if args.baseline:
        path = os.pathsep.join(filter(None, [str(args.baseline.resolve()), os.environ.get("PYTHONPATH")]))
        before_env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
        commit_file = args.baseline / "COMMIT"
        info["baseline_commit"] = commit_file.read_text().strip() if commit_file.exists() else "?"
        info["baseline_native_sha256"] = native_hash(python, before_env)
        log(f"baseline heapgate {info['baseline_commit']} (_native {info['baseline_native_sha256']}, from {args.baseline})")
        for m in [m for m in modes if m.startswith("heapgate")]:
            modes.append(BASELINE + m)
            envs[BASELINE + m] = before_env
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tmp:
        (workdir / "suite").mkdir()
        tests = build_suite(python, workdir / "suite")
        for rep in range(args.repeat):
            # Interleaved: every repetition runs each mode once, in a rotated order.
            for mode in modes[rep % len(modes):] + modes[: rep % len(modes)]:
                res = run_once(python, workdir / "suite", envs[mode], mode, tests, args.timeout)
                res["repetition"] = rep
                runs.append(res)
                if res["ok"]:
                    calls = sum(t["call_s"] for t in res["tests"].values())
                    log(f"  rep {rep + 1}/{args.repeat} {mode:22s} calls {calls:7.2f} s  session {res['session_s']:7.2f} s")
                else:
                    log(f"  rep {rep + 1}/{args.repeat} {mode:22s} FAILED: {res['error']}\n{res.get('output', '')}")
    load_after = os.getloadavg()
    problems = [r for r in runs if not r["ok"]]
    ok = {m: [r for r in runs if r["mode"] == m and r["ok"]] for m in modes}
    med: dict[str, dict[str, float]] = {}
    for m in modes:
        med[m] = {t: median([r["tests"][t]["call_s"] for r in ok[m]]) for t in tests}
        med[m]["loop:" + "test_c_blocks_live"] = median([r["tests"]["test_c_blocks_live"]["loop_s"] for r in ok[m]])
        med[m]["suite"] = median([sum(r["tests"][t]["call_s"] for t in tests if t != WARMUP) for r in ok[m]])
        med[m]["session"] = median([r["session_s"] for r in ok[m]])
    counts: dict[str, int] = {}
    for m in modes:
        for r in ok[m]:
            for t, n in r["allocations"].items():
                counts.setdefault(t, n)

    log("")
    log(f"heapgate suite benchmark, {started:%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs, {platform.machine()} "
        f"{platform.system()} {platform.release()}; medians of {args.repeat} interleaved sessions per mode")
    log(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    log("call phase (pytest's report.duration), seconds")
    head = f"{'test':28s}" + "".join(f"{m:>30s}" for m in modes)
    log(head)
    for t in [*tests, "suite", "session"]:
        log(f"{t:28s}" + "".join(f"{med[m][t]:30.3f}" for m in modes))
    plain = med["plain"]
    over = {m: med[m]["suite"] - plain["suite"] for m in modes}
    log("")
    log("overhead above plain pytest (sum of the call phases, warm-up excluded)")
    for m in modes:
        if m != "plain":
            log(f"  {m:31s} {over[m]:8.2f} s   {med[m]['suite'] / plain['suite']:6.2f}x plain")
    log("")
    log("overhead ratios (heapgate overhead / pytest-memray overhead)")
    for prefix in ("", BASELINE):
        for a, b, target in COMPARISONS:
            a = prefix + a
            if a in over and b in over and over[b] > 0:
                goal = f"   target <= {target:.2f}" if target is not None else ""
                log(f"  {a:31s}/ {b:16s} {over[a] / over[b]:6.2f}{goal}")
    log("")
    log("per event, ns above plain (events = heapgate's allocation count for the test)")
    cblocks = "loop:test_c_blocks_live"
    for m in modes:
        if m == "plain":
            continue
        c_pair = (med[m][cblocks] - plain[cblocks]) / C_BLOCKS * 1e9
        per = []
        for t in ("test_lists_one_thread", "test_lists_four_threads"):
            n = counts.get(t)
            per.append((med[m][t] - plain[t]) / n * 1e9 if n else float("nan"))
        log(f"  {m:31s} C malloc/free pair with {C_BLOCKS:,} live: {c_pair:7.0f}   "
            f"lists, 1 thread: {per[0]:6.0f}   4 threads: {per[1]:6.0f}")
    if problems:
        log(f"\n{len(problems)} session(s) failed")
    if args.json:
        doc = {
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before, "loadavg_after": load_after},
            "versions": info, "repeat": args.repeat, "modes": {m: MODES[m.removeprefix(BASELINE)] for m in modes},
            "medians_s": med, "heapgate_allocation_counts": counts,
            "runs": [{k: v for k, v in r.items() if k != "output"} for r in runs], "problems": problems,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
