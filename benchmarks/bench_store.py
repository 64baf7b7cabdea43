"""``python benchmarks/bench_store.py [--quick]``: the store benchmark of nexus_store.bench."""

import sys

from nexus_store.bench import run_benchmark

if __name__ == "__main__":
    run_benchmark("store", sys.argv[1:])
