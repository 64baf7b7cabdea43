"""``python benchmarks/run.py [--quick] [--only ...]``: the same as ``nexus-store bench``."""

from nexus_store.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
