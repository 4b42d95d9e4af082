#!/usr/bin/env python3
"""What ending a tracked test costs when it allocated from many sites: `_native.stop()` (the
capture handed from the tracker to the binding), then `Report.record()` (the capture file's
shape), the first read of `Report.sites` (the Python objects), and a `checkpoint()` taken
before `stop()`, on a call with about 100,000 allocation sites.

    python3 benches/stop_bench.py [--sites 100000] [--repeat 5] [--json out.json]

The tracked call runs generated code with one `bytearray(64)` per line (a line is a site: its
own Python frame), kept live, so every site holds memory at the peak and at the end; the lines
are spread over functions of 100 lines (finding a frame's line costs time linear in its
function's size). The numbers are wall milliseconds of each step, median of `--repeat` runs in
one process.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any, Callable

from heapgate import _native


def allocator(sites: int) -> Callable[[list[bytearray]], None]:
    per_function = 100
    functions = (sites + per_function - 1) // per_function
    body = "    keep.append(bytearray(64))\n" * per_function
    source = "".join(f"def f{i}(keep):\n{body}" for i in range(functions))
    source += "def fill(keep):\n" + "".join(f"    f{i}(keep)\n" for i in range(functions))
    namespace: dict[str, Any] = {}
    exec(compile(source, "<stop_bench>", "exec"), namespace)
    fill: Callable[[list[bytearray]], None] = namespace["fill"]
    return fill


def run_once(fill: Callable[[list[bytearray]], None]) -> dict[str, float]:
    keep: list[bytearray] = []
    gc.collect()
    _native.start([], None, _native.ThreadMode.CURRENT_THREAD)
    fill(keep)
    t0 = time.perf_counter()
    checkpoint = _native.checkpoint()
    t1 = time.perf_counter()
    report = _native.stop()
    t2 = time.perf_counter()
    facts: dict[str, str | None] = {"python_version": "", "platform": "", "executable": None, "rootdir": None}
    report.record("bench::stop", "passed", None, None, _native.ThreadMode.CURRENT_THREAD, False, facts)
    t3 = time.perf_counter()
    sites = report.sites
    t4 = time.perf_counter()
    assert len(sites) >= len(keep) and len(checkpoint.sites) >= len(keep)
    return {
        "sites": float(len(sites)),
        "checkpoint_ms": (t1 - t0) * 1e3,
        "stop_ms": (t2 - t1) * 1e3,
        "record_ms": (t3 - t2) * 1e3,
        "sites_list_ms": (t4 - t3) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the runs and medians here")
    args = parser.parse_args()
    fill = allocator(args.sites)
    runs = [run_once(fill) for _ in range(args.repeat)]
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    for key, value in medians.items():
        print(f"{key:>14}: {value:,.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "median": medians}, f, indent=2)


if __name__ == "__main__":
    main()
