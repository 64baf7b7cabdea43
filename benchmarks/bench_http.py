"""``python benchmarks/bench_http.py [--quick]``: the http benchmark of nexus_store.bench."""

import sys

from nexus_store.bench import run_benchmark

if __name__ == "__main__":
    run_benchmark("http", sys.argv[1:])
