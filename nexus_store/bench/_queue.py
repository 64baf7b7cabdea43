"""Sync queue benchmark: lease+ack throughput, and lease latency as the queue grows.

Run: ``nexus-store bench --only queue [--quick]``, or ``python -m
nexus_store.bench._queue [--quick]`` (from a checkout also
``python benchmarks/bench_queue.py``), or import and call ``run(quick)``.

Printed from one run, on files in a temporary directory:

3. Lease+ack throughput of ``PrioritySyncQueue`` (``lease(100)`` then ``ack`` of the batch,
   ``durability="full"``) vs ``persistqueue.SQLiteAckQueue`` ``get()`` + ``ack()`` per item
   (its API hands out one item per call and commits each call; WAL, SQLite's default
   ``synchronous``). Both queues hold the same payloads (about 200 bytes), filled before
   the clock starts. Target: ratio >= 20.
   The ratio depends on how long a synced commit takes on the disk (persist-queue makes
   two per item, we make one per batch: the lease; acks do not wait for the disk), so
   the run also prints that latency and the ratio with no sync on either side
   (``synchronous=NORMAL``): the CPU cost alone.
4. Lease latency: one ``lease(100)`` followed by the ``release`` of that batch (and, as a
   second figure, ``lease(100)`` + ``ack``) with 10,000 vs 1,000,000 ops queued (100,000
   with ``--quick``), mixed priorities, each op its own item. Measured with
   ``durability="full"`` (each call commits and syncs) and ``"normal"`` (no sync per
   commit: the query cost alone). Both queues are built through ``enqueue`` inside one
   transaction. Target: median latency ratio (big / small) <= 1.5.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._codec import encode
from .._database import Database, Durability
from .._priority import SyncPriority
from ..queue import PrioritySyncQueue

BATCH = 100


def payload(i: int) -> bytes:
    """An encoded record of about 200 bytes."""
    return encode(
        {
            "id": f"item-{i:08d}",
            "title": f"note number {i}",
            "body": "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2,
            "rank": i % 100,
            "done": i % 3 == 0,
            "tags": ["field", "survey", f"t{i % 7}"],
        }
    )


def fill(queue: PrioritySyncQueue, count: int, *, start: int = 0) -> None:
    """Enqueue ``count`` ops (one per item, priorities mixed) in one transaction."""
    body = payload(0)
    with queue.database.transaction():
        for i in range(start, start + count):
            queue.enqueue("notes", f"item-{i:08d}", body, priority=SyncPriority(i % 4))


def commit_latency(tmp: Path, commits: int = 60) -> float:
    """Median seconds of one small committed write (WAL, ``synchronous=FULL``) on this disk."""
    database = Database(tmp / "commit-latency.db", durability="full")
    database.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    times = []
    for i in range(commits):
        start = time.perf_counter()
        with database.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        times.append(time.perf_counter() - start)
    database.close()
    return statistics.median(times)


def bench_throughput(
    tmp: Path, ours_ops: int, theirs_ops: int, durability: Durability
) -> dict[str, float]:
    """Figure 3: lease(100)+ack vs persist-queue get+ack, ops per second.

    With ``durability="normal"`` persist-queue's connection gets ``synchronous=NORMAL``
    too: neither side syncs per commit, which leaves the CPU cost of each.
    """
    from persistqueue import SQLiteAckQueue  # noqa: PLC0415 - the bench extra, for this figure

    queue = PrioritySyncQueue(tmp / f"ours-{durability}.db", durability=durability)
    fill(queue, ours_ops)
    theirs = SQLiteAckQueue(str(tmp / f"persistqueue-{durability}"))
    if durability == "normal":
        theirs._conn.execute("PRAGMA synchronous=NORMAL")  # baseline set-up, same as ours
    for i in range(theirs_ops):
        theirs.put(payload(i))

    # Alternate the two sides in rounds so that bursts of disk latency hit both alike.
    rounds = 5
    ours_s = theirs_s = 0.0
    drained = 0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(ours_ops // rounds // BATCH):
            ops = queue.lease(BATCH)
            queue.ack([op.op_id for op in ops])
            drained += len(ops)
        ours_s += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(theirs_ops // rounds):
            item = theirs.get(block=False)
            theirs.ack(item)
        theirs_s += time.perf_counter() - start
    assert drained == ours_ops, drained
    assert theirs.size == 0

    queue.close()
    theirs.close()
    ours_rate, theirs_rate = ours_ops / ours_s, theirs_ops / theirs_s
    return {"ours_ops_s": ours_rate, "theirs_ops_s": theirs_rate, "ratio": ours_rate / theirs_rate}


_refill_ids = itertools.count(10**9)


def _latencies(queue: PrioritySyncQueue, rounds: int, *, ack: bool) -> list[float]:
    """Seconds per lease(100) + release (or + ack), ``rounds`` times after a warm-up.

    Acked batches are replaced (outside the timing) so the queue keeps its size.
    """
    times: list[float] = []
    for r in range(rounds + 5):
        start = time.perf_counter()
        ops = queue.lease(BATCH)
        ids = [op.op_id for op in ops]
        if ack:
            queue.ack(ids)
        else:
            queue.release(ids)
        elapsed = time.perf_counter() - start
        assert len(ops) == BATCH
        if ack:
            fill(queue, BATCH, start=next(_refill_ids) * BATCH)
        if r >= 5:
            times.append(elapsed)
    return times


def bench_latency(tmp: Path, small: int, big: int, rounds: int) -> dict[str, dict[str, float]]:
    """Figure 4: lease latency with ``small`` vs ``big`` ops queued, per durability."""
    paths = {"small": tmp / "small.db", "big": tmp / "big.db"}
    for name, count in (("small", small), ("big", big)):
        with PrioritySyncQueue(paths[name], durability="normal") as queue:
            fill(queue, count)
    results: dict[str, dict[str, float]] = {}
    for durability in ("full", "normal"):
        queues = {
            name: PrioritySyncQueue(path, durability=durability) for name, path in paths.items()
        }
        release: dict[str, list[float]] = {"small": [], "big": []}
        acked: dict[str, list[float]] = {"small": [], "big": []}
        # Alternate the two queues so that disk and CPU noise hits both alike.
        for _ in range(4):
            for name, queue in queues.items():
                release[name] += _latencies(queue, rounds // 4, ack=False)
            for name, queue in queues.items():
                acked[name] += _latencies(queue, rounds // 4, ack=True)
        figures: dict[str, float] = {"small": small, "big": big}
        for name in queues:
            figures[f"{name}_release_ms"] = statistics.median(release[name]) * 1000
            figures[f"{name}_ack_ms"] = statistics.median(acked[name]) * 1000
        figures["release_ratio"] = figures["big_release_ms"] / figures["small_release_ms"]
        figures["ack_ratio"] = figures["big_ack_ms"] / figures["small_ack_ms"]
        results[durability] = figures
        for queue in queues.values():
            queue.close()
    return results


def run(quick: bool = False) -> dict[str, Any]:
    """Run every figure and return them (``quick``: fewer ops, 100k instead of 1M queued)."""
    big = 100_000 if quick else 1_000_000
    ours_ops, theirs_ops = (5_000, 500) if quick else (20_000, 2_000)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-queue-") as name:
        tmp = Path(name)
        latency_of_commit = commit_latency(tmp)
        throughput = bench_throughput(tmp, ours_ops, theirs_ops, "full")
        latency_of_commit_after = commit_latency(tmp)
        throughput_cpu = bench_throughput(tmp, ours_ops, theirs_ops * 4, "normal")
        started = time.perf_counter()
        latency = bench_latency(tmp, 10_000, big, rounds=40 if quick else 200)
        latency_s = time.perf_counter() - started
    return {
        "batch": BATCH,
        "commit_latency_ms": (latency_of_commit * 1000, latency_of_commit_after * 1000),
        "throughput": throughput,
        "throughput_cpu": throughput_cpu,
        "latency": latency,
        "latency_seconds": latency_s,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    results = run(args.quick)
    t, c = results["throughput"], results["throughput_cpu"]
    print("nexus-store sync queue benchmark" + (" (quick)" if args.quick else ""))
    print(
        f"3. lease({results['batch']})+ack, durability full: {t['ours_ops_s']:,.0f} ops/s vs "
        f"persist-queue SQLiteAckQueue get+ack {t['theirs_ops_s']:,.0f} ops/s "
        f"-> ratio {t['ratio']:.1f} (target >= 20)"
    )
    before, after = results["commit_latency_ms"]
    print(
        f"   (a synced commit took {before:.2f} ms on this disk before and {after:.2f} ms "
        f"after; with no sync on either side, the CPU cost alone: {c['ours_ops_s']:,.0f} vs "
        f"{c['theirs_ops_s']:,.0f} ops/s -> ratio {c['ratio']:.1f})"
    )
    for label, f in results["latency"].items():
        print(
            f"4. lease({results['batch']})+release, durability {label}: "
            f"{f['small_release_ms']:.2f} ms with {f['small']:,.0f} queued vs "
            f"{f['big_release_ms']:.2f} ms with {f['big']:,.0f} -> ratio "
            f"{f['release_ratio']:.2f} (target <= 1.5)"
        )
        print(
            f"   lease({results['batch']})+ack, durability {label}: {f['small_ack_ms']:.2f} ms vs "
            f"{f['big_ack_ms']:.2f} ms -> ratio {f['ack_ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
