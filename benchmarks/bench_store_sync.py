"""``python benchmarks/bench_store_sync.py [--ops N] [--rounds R]``: store.sync() draining."""

from nexus_store.bench._store_sync import main

if __name__ == "__main__":
    main()
