"""``python benchmarks/bench_drain.py [--quick]``: the drain benchmark of nexus_store.bench."""

import sys

from nexus_store.bench import run_benchmark

if __name__ == "__main__":
    run_benchmark("drain", sys.argv[1:])
