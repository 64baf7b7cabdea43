"""``python benchmarks/bench_catchup.py [--changes N] [--rounds R]``: store.sync() catching up."""

from nexus_store.bench._catchup import main

if __name__ == "__main__":
    main()
