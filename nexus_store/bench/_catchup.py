"""Catch-up: a fresh store pulling many remote changes with ``store.sync()``.

Run: ``nexus-store bench --only catchup [--quick]``, or ``python -m nexus_store.bench._catchup
[--quick] [--changes N] [--rounds R]`` (from a checkout also ``python
benchmarks/bench_catchup.py``).

``nexus-store serve`` on SQLite is filled, untimed, with ``N`` changes (100,000 by
default; 10,000 with ``--quick``) of about 200 bytes each (the ops of the HTTP benchmark),
pushed by another writer through ``HttpBackend`` in batches of 500. Then, in each round:

1. ``HttpBackend.pull`` alone pages through the same changes (pages of the engine's
   default page size, the collection the store asks for, nothing applied): the ceiling
   that the server and the wire set;
2. a fresh typed :class:`~nexus_store.NexusStore` with ``HttpBackend`` runs
   ``store.sync()`` (default settings) and pulls them all into its file (WAL,
   ``synchronous=FULL``); the run is checked to have applied each change once;
3. ``HttpBackend.pull`` alone again.

Printed per round: the store's changes/s (with its seconds and requests), the pull alone
(the mean of the measurement before and the one after, with both), and the ratio of the
two. What the ratio leaves out of 1 is applying the pages to the local file, beside the
requests for them. Each measurement runs in a child process of its own (a fresh store and
a fresh connection, as an app would have them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from .._store import NexusStore
from ..backends import HttpBackend
from ..sync.engine import EngineConfig
from ..testing import ServerProcess
from ._child import child_figures
from ._drain import BATCH, TOKEN, Note
from ._http import make_ops, push_ours

__all__: list[str] = []

COLLECTION = "notes"
"""The collection of :func:`~._http.make_ops`' ops."""
FILL = 20_000
"""Ops built and pushed at a time while filling the server (bounds this process's memory)."""


def fill(url: str, count: int) -> None:
    """Push ``count`` fresh changes to the server, in batches of 500 (untimed)."""
    run_id = uuid.uuid4().hex[:8]
    for first in range(0, count, FILL):
        ops = make_ops(min(FILL, count - first), f"{run_id}-{first // FILL:04d}")
        anyio.run(push_ours, url, ops, BATCH)


def sync_child(path: str, url: str, expected: int) -> None:
    """Pull everything into a fresh store at ``path`` with ``store.sync()``; print the
    figures as JSON (child process)."""
    with NexusStore[Note, str](
        path, model=Note, collection=COLLECTION, backend=HttpBackend(url, token=TOKEN)
    ) as store:
        start = time.perf_counter()
        summary = store.sync()
        seconds = time.perf_counter() - start
        count = store.count()
    if not summary.ok or summary.pulled != expected or count != expected:
        raise RuntimeError(f"the store did not get each change once: {summary!r}, {count} rows")
    figures = {
        "pulled": summary.pulled,
        "requests": summary.requests,
        "seconds": seconds,
        "changes_per_s": summary.pulled / seconds,
    }
    print(json.dumps(figures))


async def _pull_alone(url: str, expected: int) -> dict[str, float]:
    page = EngineConfig().pull_page
    async with HttpBackend(url, token=TOKEN) as remote:
        await remote.pull(0, 1, collections=[COLLECTION])  # connect outside the timing
        start = time.perf_counter()
        cursor, total, requests = 0, 0, 0
        for _ in range(expected // page + 2):  # bounded: one page more than there can be
            changes = await remote.pull(cursor, page, collections=[COLLECTION])
            requests += 1
            total += len(changes.changes)
            if not changes.has_more:
                break
            cursor = changes.cursor
        seconds = time.perf_counter() - start
    if total != expected:
        raise RuntimeError(f"the pull alone got {total} changes of {expected}")
    return {
        "pulled": total,
        "requests": requests,
        "seconds": seconds,
        "changes_per_s": total / seconds,
    }


def pull_child(url: str, expected: int) -> None:
    """Page through the server's changes with ``HttpBackend.pull`` alone; print the
    figures as JSON (child process)."""
    print(json.dumps(anyio.run(_pull_alone, url, expected)))


def _child(*args: str) -> dict[str, Any]:
    return child_figures("nexus_store.bench._catchup", *args)


def main(argv: Sequence[str] | None = None) -> None:
    """Fill a server, then measure the catch-up beside the pull alone, and print both."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--changes", type=int, default=100_000, help="remote changes to pull")
    parser.add_argument("--rounds", type=int, default=1, help="catch-ups, one after another")
    parser.add_argument("--quick", action="store_true", help="a short run (10,000 changes)")
    parser.add_argument("--sync-child", nargs=3, metavar=("DB", "URL", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--pull-child", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sync_child:
        path, url, expected = args.sync_child
        sync_child(path, url, int(expected))
        return
    if args.pull_child:
        url, expected = args.pull_child
        pull_child(url, int(expected))
        return
    if args.quick:
        args.changes = min(args.changes, 10_000)
    count = str(args.changes)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nexus-bench-catchup-") as name:
        tmp = Path(name)
        with ServerProcess(f"sqlite:///{tmp}/server.db", tokens={TOKEN: "bench"}) as server:
            url = server.base_url
            fill(url, args.changes)
            for round_ in range(args.rounds):
                path = tmp / f"store{round_}.db"
                before = _child("--pull-child", url, count)
                store = _child("--sync-child", str(path), url, count)
                after = _child("--pull-child", url, count)
                path.unlink()
                alone = (before["changes_per_s"] + after["changes_per_s"]) / 2
                ratio = store["changes_per_s"] / alone
                ratios.append(ratio)
                print(
                    f"store.sync() pulled {store['pulled']:,.0f} changes: "
                    f"{store['changes_per_s']:>7,.0f} changes/s ({store['seconds']:.1f} s, "
                    f"{store['requests']:.0f} requests); HttpBackend.pull alone "
                    f"{alone:>7,.0f} changes/s ({before['changes_per_s']:,.0f}, "
                    f"{after['changes_per_s']:,.0f}; pages of {EngineConfig().pull_page:,}); "
                    f"ratio {ratio:.2f}",
                    flush=True,
                )
    if len(ratios) > 1:
        print(f"median ratio {statistics.median(ratios):.2f} over {len(ratios)} rounds")


if __name__ == "__main__":
    main()
