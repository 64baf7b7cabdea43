"""``nexus-store bench local``: the store and the queue on this disk, beside raw sqlite3.

Each figure is measured beside raw sqlite3 doing the same work in the same run, the two
sides alternating in short rounds so that the disk's and the CPU's moods hit both alike;
the ratio (ours / raw) is the figure that travels between machines:

- ``save()`` per op with ``durability="full"`` (a synced commit per save) and
  ``"normal"`` (no sync: the CPU cost alone), against :class:`~._store.RawStore`
  (validation, encoding, the row and a queue row, one transaction per op);
- ``save_many()`` of 100 items per call, against raw sqlite3 with 100 items per
  transaction;
- ``lease(100)`` + ``ack`` of the batch, against :class:`RawQueue`: the next 100 ops in
  priority order marked leased under a token and a deadline in one synced transaction,
  then deleted in one that does not wait for the disk (as our acks);
- the disk's synced commit latency (a one-row transaction, WAL, ``synchronous=FULL``),
  before and after the rest.

The files go in a temporary folder beside ``--db PATH`` (on the disk being measured) and
are removed afterwards.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._database import Durability
from ..queue import PrioritySyncQueue
from ._figures import Figure, Target
from ._queue import commit_latency, fill, payload
from ._store import bench_save, bench_save_many

__all__ = ["RawQueue", "bench_lease_ack", "local_figures", "run_local"]

_BATCH = 100


class RawQueue:
    """The baseline queue: the same rows and the same two transactions, by hand."""

    def __init__(self, path: Path, durability: str = "FULL") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.durability = durability
        self.conn.execute(f"PRAGMA synchronous={durability}")
        self.conn.execute(
            "CREATE TABLE queue (seq INTEGER PRIMARY KEY, op_id TEXT NOT NULL UNIQUE, "
            "collection TEXT NOT NULL, item_id NOT NULL, kind TEXT NOT NULL, "
            "priority INTEGER NOT NULL, payload BLOB, state TEXT NOT NULL, "
            "leased_until REAL, token INTEGER, created_at REAL NOT NULL)"
        )
        self.conn.execute("CREATE INDEX queue_order ON queue (state, priority, seq)")
        self.token = 0

    def fill(self, count: int) -> None:
        """Queue ``count`` ops (one per item, priorities mixed) in one transaction."""
        body = payload(0)
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO queue (op_id, collection, item_id, kind, priority, payload, state, "
            "created_at) VALUES (?, 'notes', ?, 'upsert', ?, ?, 'pending', ?)",
            ((str(uuid.uuid4()), f"item-{i:08d}", i % 4, body, now) for i in range(count)),
        )
        self.conn.execute("COMMIT")

    def lease(self, count: int, lease_for: float = 30.0) -> list[tuple[int, str, bytes]]:
        """The next ``count`` pending ops, marked leased (a synced commit)."""
        self.token += 1
        self.conn.execute("BEGIN IMMEDIATE")
        rows = self.conn.execute(
            "SELECT seq, op_id, payload FROM queue WHERE state = 'pending' "
            "ORDER BY priority, seq LIMIT ?",
            (count,),
        ).fetchall()
        until = time.time() + lease_for
        self.conn.executemany(
            "UPDATE queue SET state = 'leased', leased_until = ?, token = ? WHERE seq = ?",
            ((until, self.token, row[0]) for row in rows),
        )
        self.conn.execute("COMMIT")
        return rows

    def ack(self, op_ids: list[str]) -> None:
        """Delete acknowledged ops (a commit that does not wait for the disk)."""
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "DELETE FROM queue WHERE op_id = ? AND token = ?",
            ((op_id, self.token) for op_id in op_ids),
        )
        self.conn.execute("COMMIT")
        self.conn.execute(f"PRAGMA synchronous={self.durability}")

    def close(self) -> None:
        self.conn.close()


def bench_lease_ack(tmp: Path, ops: int, durability: Durability) -> dict[str, float]:
    """lease(100) + ack, ops per second, ours and raw, alternating in 10 rounds."""
    ours = PrioritySyncQueue(tmp / f"queue-{durability}.db", durability=durability)
    fill(ours, ops)
    raw = RawQueue(tmp / f"raw-queue-{durability}.db", durability.upper())
    raw.fill(ops)
    rounds = 10
    per_round = max(1, ops // rounds // _BATCH)
    ours_s = raw_s = 0.0
    moved = 0
    for r in range(rounds):
        order = (0, 1) if r % 2 else (1, 0)
        for side in order:
            start = time.perf_counter()
            for _ in range(per_round):
                if side:
                    batch = ours.lease(_BATCH)
                    ours.ack([op.op_id for op in batch], token=batch.token)
                    moved += len(batch)
                else:
                    rows = raw.lease(_BATCH)
                    raw.ack([row[1] for row in rows])
            elapsed = time.perf_counter() - start
            if side:
                ours_s += elapsed
            else:
                raw_s += elapsed
    ours.close()
    raw.close()
    n = rounds * per_round * _BATCH
    assert moved == n, (moved, n)
    return {"ours_ops_s": n / ours_s, "raw_ops_s": n / raw_s, "ratio": raw_s / ours_s}


def run_local(
    where: Path | None,
    *,
    quick: bool = False,
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure everything (see the module docstring); ``where``: a path on the disk to
    measure (its folder holds the temporary files); ``step`` is told each stage."""
    folder = where.parent if where is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="nexus-bench-local-", dir=folder))
    say = step or (lambda _name: None)
    try:
        say("disk: synced commit latency")
        before = commit_latency(tmp, commits=30 if quick else 100)
        say("save(), durability full")
        full = bench_save(tmp, ops=200 if quick else 2_000)
        say("save(), durability normal")
        normal = bench_save(tmp, ops=1_000 if quick else 5_000, durability="normal")
        say("save_many(100)")
        many = bench_save_many(tmp, batches=20 if quick else 200, rounds=4)
        say("lease(100) + ack, durability full")
        lease_full = bench_lease_ack(tmp, 4_000 if quick else 20_000, "full")
        say("lease(100) + ack, durability normal")
        lease_normal = bench_lease_ack(tmp, 4_000 if quick else 20_000, "normal")
        say("disk: synced commit latency, again")
        after = commit_latency(tmp, commits=30 if quick else 100)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "quick": quick,
        "commit_ms": [round(before * 1000, 3), round(after * 1000, 3)],
        "save_full": full,
        "save_normal": normal,
        "save_many_100": many,
        "lease_ack_full": lease_full,
        "lease_ack_normal": lease_normal,
    }


def local_figures(results: dict[str, Any]) -> list[Figure]:
    """The figures of :func:`run_local`, with the project's targets where it has them."""
    out: list[Figure] = []
    rows = (
        ("save_full", "save() per op, durability full", "ops/s", Target(">=", 0.9)),
        ("save_normal", "save() per op, durability normal", "ops/s", None),
        ("save_many_100", "save_many(100)", "items/s", Target(">=", 0.8)),
        ("lease_ack_full", "lease(100) + ack, durability full", "ops/s", None),
        ("lease_ack_normal", "lease(100) + ack, durability normal", "ops/s", None),
    )
    for key, label, unit, target in rows:
        figures = results[key]
        ours = figures.get("ours_ops_s", figures.get("ours_items_s"))
        raw = figures.get("raw_ops_s", figures.get("raw_items_s"))
        group = "local store and queue"
        out.append(
            Figure(f"local.{key}.ours", group, f"{label}: nexus-store", ours, unit, "higher")
        )
        out.append(Figure(f"local.{key}.raw", group, f"{label}: raw sqlite3", raw, unit, "higher"))
        out.append(
            Figure(
                f"local.{key}.ratio",
                group,
                f"{label}: ratio",
                figures["ratio"],
                "x",
                "higher",
                target,
                note="nexus-store / raw sqlite3, same run",
            )
        )
    before, after = results["commit_ms"]
    out.append(
        Figure(
            "local.commit_ms",
            "disk",
            "synced commit latency (median)",
            statistics.mean([before, after]),
            "ms",
            "lower",
            note=f"{before:.2f} ms before, {after:.2f} ms after the run",
        )
    )
    return out
