"""Run every benchmark (or some) one after another, each in its own process.

Usage: ``python benchmarks/run.py [--quick] [--only store,queue,http,drain,worker]``
(also ``nexus-store bench`` and ``scripts/bench`` from a source checkout).

Each benchmark prints its figures as ratios against a baseline measured in the same run;
this runner only sequences them and reports which ones failed to run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "store": "bench_store.py",
    "queue": "bench_queue.py",
    "http": "bench_http.py",
    "drain": "bench_drain.py",
    "worker": "bench_worker.py",
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; return 0 if all ran, 1 otherwise."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    failed: list[str] = []
    for name in names:
        script = HERE / BENCHMARKS[name]
        print(f"\n=== {name} ({script.name}{' --quick' if args.quick else ''}) ===", flush=True)
        started = time.perf_counter()
        command = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        code = subprocess.call(command, cwd=HERE.parent)
        print(f"=== {name}: exit {code} after {time.perf_counter() - started:.0f}s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that did not finish cleanly: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
