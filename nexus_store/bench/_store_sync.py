"""The drain as users run it: ``store.sync()`` against ``HttpBackend`` alone pushing.

Run: ``nexus-store bench --only store_sync`` or ``python -m nexus_store.bench._store_sync
[--quick] [--ops N] [--rounds R]`` (from a checkout also ``python
benchmarks/bench_store_sync.py``).

Target 4 of the throughput issue: ``store.sync()`` on a typed ``NexusStore`` with default
settings (push and pull phases included), draining ``N`` fresh saves (100,000 by default,
about 200 bytes each, the workload of the drain benchmark) through ``HttpBackend`` to
``nexus-store serve`` on SQLite, against ``HttpBackend`` alone pushing as many pre-built
ops in batches of 500 to the same server (the push figure; the mean of a measurement
before and one after each drain). Target: drain >= 0.8 x push. Also printed: how many
changes the run pulled back (0: the run does not download its own changes) and the
requests it sent.

Each drain runs in a child process of its own (a fresh store, as an app would have).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .._store import NexusStore
from ..backends import HttpBackend
from ..testing import ServerProcess
from ._drain import TOKEN, Note, build_store, push_only
from ._drain import drain as run_drain_child

__all__: list[str] = []

TARGET = 0.8


def drain_child(path: str, url: str) -> None:
    """Drain the store at ``path`` with ``store.sync()``; print the figures as JSON."""
    with NexusStore[Note, str](path, model=Note, backend=HttpBackend(url, token=TOKEN)) as store:
        queued = store.queue.stats().live
        start = time.perf_counter()
        summary = store.sync()
        seconds = time.perf_counter() - start
        figures = {
            "queued": queued,
            "pushed": summary.pushed,
            "pulled": summary.pulled,
            "requests": summary.requests,
            "left": store.queue.stats().live,
            "seconds": seconds,
            "ops_per_s": summary.pushed / seconds,
        }
    print(json.dumps(figures))


def drain(path: Path, url: str) -> dict[str, float]:
    """Run :func:`drain_child` in a fresh process and return its figures."""
    return run_drain_child(path, url, module="nexus_store.bench._store_sync")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the drains and print each figure with its ratio and target."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ops", type=int, default=100_000, help="saves to drain")
    parser.add_argument("--rounds", type=int, default=1, help="drains, one after another")
    parser.add_argument("--quick", action="store_true", help="a short run (10,000 saves)")
    parser.add_argument("--drain-child", nargs=2, metavar=("DB", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drain_child:
        drain_child(*args.drain_child)
        return
    if args.quick:
        args.ops = min(args.ops, 10_000)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nexus-bench-store-sync-") as name:
        tmp = Path(name)
        with ServerProcess(f"sqlite:///{tmp}/server.db", tokens={TOKEN: "bench"}) as server:
            for round_ in range(args.rounds):
                path = tmp / f"store{round_}.db"
                build_store(path, args.ops)
                before = push_only(server.base_url, args.ops)
                figures = drain(path, server.base_url)
                after = push_only(server.base_url, args.ops)
                path.unlink()
                push = (before + after) / 2
                ratio = figures["ops_per_s"] / push
                ratios.append(ratio)
                print(
                    f"store.sync() drained {figures['pushed']:,.0f} saves: "
                    f"{figures['ops_per_s']:>7,.0f} ops/s ({figures['seconds']:.1f} s, "
                    f"{figures['requests']:.0f} requests, pulled back {figures['pulled']:.0f}); "
                    f"HttpBackend push {push:>7,.0f} ops/s ({before:,.0f}, {after:,.0f}); "
                    f"ratio {ratio:.3f} (target >= {TARGET}: "
                    f"{'met' if ratio >= TARGET else 'NOT met'})",
                    flush=True,
                )
    if len(ratios) > 1:
        print(f"median ratio {statistics.median(ratios):.2f} over {len(ratios)} rounds")


if __name__ == "__main__":
    main()
