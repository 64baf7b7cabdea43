"""``python benchmarks/bench_queue.py [--quick]``: the queue benchmark of nexus_store.bench."""

import sys

from nexus_store.bench import run_benchmark

if __name__ == "__main__":
    run_benchmark("queue", sys.argv[1:])
