"""``python benchmarks/bench_server.py [options]``: the same as ``nexus-store bench server``."""

import sys

from nexus_store.cli import main

if __name__ == "__main__":
    main(["bench", "server", *sys.argv[1:]])
