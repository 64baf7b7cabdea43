"""``python benchmarks/bench_files.py [--quick]``: the files benchmark of nexus_store.bench."""

import sys

from nexus_store.bench import run_benchmark

if __name__ == "__main__":
    run_benchmark("files", sys.argv[1:])
