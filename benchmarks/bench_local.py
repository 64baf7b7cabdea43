"""``python benchmarks/bench_local.py [options]``: the same as ``nexus-store bench local``."""

import sys

from nexus_store.cli import main

if __name__ == "__main__":
    main(["bench", "local", *sys.argv[1:]])
