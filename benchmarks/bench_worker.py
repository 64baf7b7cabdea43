"""``python benchmarks/bench_worker.py [--quick]``: the worker benchmark of nexus_store.bench."""

import sys

from nexus_store.bench import run_benchmark

if __name__ == "__main__":
    run_benchmark("worker", sys.argv[1:])
