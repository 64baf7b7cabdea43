"""``python benchmarks/bench_sync.py [options]``: the same as ``nexus-store bench sync``."""

import sys

from nexus_store.cli import main

if __name__ == "__main__":
    main(["bench", "sync", *sys.argv[1:]])
