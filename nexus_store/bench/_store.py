"""Local store benchmark: ``save()`` and ``save_many()`` against raw sqlite3, and memory.

Run: ``nexus-store bench --only store [--quick]``, or ``python -m
nexus_store.bench._store [--quick]`` (from a checkout also
``python benchmarks/bench_store.py``), or import and call ``run(quick)``.

Printed from one run, on files in a temporary directory:

1. ``save()`` per op with ``durability="full"`` vs raw sqlite3 doing the same work per op:
   pydantic validation, ``model_dump(mode="json")``, msgpack encoding, an upsert of the
   row, an insert of a queue row (uuid op id, priority index), one ``BEGIN IMMEDIATE`` ...
   ``COMMIT`` per op, WAL, ``synchronous=FULL``. Target: ratio (ours/raw ops per s) >= 0.9.
   The two sides alternate every 10 ops, so both see the same fsync latency. The same
   comparison with ``durability="normal"`` (no fsync per commit) is printed beside it: the
   CPU cost alone, which decides the ratio when fsync is fast.
2. ``save_many()`` of 100 items per call vs raw sqlite3 with 100 items per transaction.
   Target: >= 0.8.
5. Peak RSS growth over 100,000 saves, measured in a fresh subprocess after a warm-up of
   2,000 saves: ``save()`` per item with ``durability="normal"`` (no fsync per op, so the run
   takes seconds, not minutes; the code path is the same), or ``save_many()`` of 100 with
   ``--quick``. Target: <= 8 MiB.

The two sides alternate (figure 1 every 10 ops, figure 2 in rounds) so that disk and CPU
noise hits both alike.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import psutil
from pydantic import BaseModel

from .._database import Durability
from .._priority import SyncPriority
from .._store import NexusStore

MIB = 1024 * 1024


class Note(BaseModel):
    """A record of about 200 bytes."""

    id: str
    title: str
    body: str
    rank: int
    done: bool
    tags: list[str]
    created: datetime.datetime


def make_notes(n: int, prefix: str) -> list[Note]:
    """``n`` distinct notes."""
    created = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    return [
        Note(
            id=f"{prefix}-{i:08d}",
            title=f"note number {i}",
            body="lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2,
            rank=i % 100,
            done=i % 3 == 0,
            tags=["field", "survey", f"t{i % 7}"],
            created=created,
        )
        for i in range(n)
    ]


class RawStore:
    """The baseline: the same work as a save, written by hand with sqlite3."""

    def __init__(self, path: Path, *, durability: str = "FULL") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={durability}")
        self.conn.execute(
            "CREATE TABLE note (id TEXT PRIMARY KEY NOT NULL, title TEXT, body TEXT, rank INTEGER,"
            " done INTEGER, tags TEXT, created TEXT, version INTEGER NOT NULL DEFAULT 0)"
        )
        # The queue row holds what an op needs (a uuid op id for idempotency, the item,
        # priority, payload, versions, stamp, state, timestamps), with a unique op id and an
        # index in serving order.
        self.conn.execute(
            "CREATE TABLE queue (seq INTEGER PRIMARY KEY, op_id TEXT NOT NULL UNIQUE, "
            "collection TEXT NOT NULL, item_id NOT NULL, kind TEXT NOT NULL, "
            "priority INTEGER NOT NULL, payload BLOB, schema_version INTEGER NOT NULL, "
            "base_version INTEGER NOT NULL, hlc TEXT NOT NULL, state TEXT NOT NULL, "
            "created_at REAL NOT NULL, updated_at REAL NOT NULL)"
        )
        self.conn.execute("CREATE INDEX queue_order ON queue (priority, seq)")
        self.upsert = (
            "INSERT INTO note (id, title, body, rank, done, tags, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET title = excluded.title, "
            "body = excluded.body, rank = excluded.rank, done = excluded.done, "
            "tags = excluded.tags, created = excluded.created"
        )
        self.enqueue = (
            "INSERT INTO queue (op_id, collection, item_id, kind, priority, payload, "
            "schema_version, base_version, hlc, state, created_at, updated_at) "
            "VALUES (?, ?, ?, 'upsert', ?, ?, 1, 0, ?, 'pending', ?, ?)"
        )
        self.counter = 0

    def _one(self, item: Note) -> None:
        data = Note.model_validate(dict(item)).model_dump(mode="json")
        payload = msgpack.packb(data, use_bin_type=True)
        row = (
            data["id"],
            data["title"],
            data["body"],
            data["rank"],
            data["done"],
            json.dumps(data["tags"], separators=(",", ":")),
            data["created"],
        )
        self.conn.execute(self.upsert, row)
        now = time.time()
        self.counter += 1
        stamp = f"{int(now * 1000):013d}-{self.counter % 100000:05d}-bench"
        self.conn.execute(
            self.enqueue, (str(uuid.uuid4()), "note", data["id"], 2, payload, stamp, now, now)
        )

    def save(self, item: Note) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self._one(item)
        self.conn.execute("COMMIT")

    def save_many(self, items: list[Note]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        for item in items:
            self._one(item)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_save(
    tmp: Path, ops: int, chunk: int = 10, durability: Durability = "full"
) -> dict[str, float]:
    """Figure 1: per-op save (durability full; ``"normal"`` shows the CPU cost alone).

    The sides alternate every ``chunk`` ops (and swap which goes first), because an fsync's
    latency drifts with the disk's load: both sides then see the same disk.
    """
    store = NexusStore[Note, str](tmp / f"ours_{durability}.db", model=Note, durability=durability)
    raw = RawStore(tmp / f"raw_{durability}.db", durability=durability.upper())
    for item in make_notes(200, "warm"):  # warm-up: schema, caches, WAL file
        store.save(item)
        raw.save(item)
    ours_items = make_notes(ops, "o")
    raw_items = make_notes(ops, "r")
    ours_t = raw_t = 0.0
    clock = time.perf_counter
    for start in range(0, ops, chunk):
        for side in (0, 1) if (start // chunk) % 2 else (1, 0):
            t = clock()
            if side:
                for item in ours_items[start : start + chunk]:
                    store.save(item)
                ours_t += clock() - t
            else:
                for item in raw_items[start : start + chunk]:
                    raw.save(item)
                raw_t += clock() - t
    store.close()
    raw.close()
    return {"ours_ops_s": ops / ours_t, "raw_ops_s": ops / raw_t, "ratio": raw_t / ours_t}


def bench_save_many(tmp: Path, batches: int, rounds: int, size: int = 100) -> dict[str, float]:
    """Figure 2: save_many of ``size`` per call vs raw with ``size`` per transaction."""
    store = NexusStore[Note, str](tmp / "ours_many.db", model=Note, durability="full")
    raw = RawStore(tmp / "raw_many.db")
    per_round = batches // rounds
    ours_t = raw_t = 0.0
    for r in range(rounds + 1):
        ours_items = make_notes(per_round * size, f"o{r}")
        raw_items = make_notes(per_round * size, f"r{r}")

        def ours(items: list[Note] = ours_items) -> None:
            for i in range(0, len(items), size):
                store.save_many(items[i : i + size], priority=SyncPriority.NORMAL)

        def theirs(items: list[Note] = raw_items) -> None:
            for i in range(0, len(items), size):
                raw.save_many(items[i : i + size])

        first, second = (ours, theirs) if r % 2 else (theirs, ours)
        t1, t2 = _timed(first), _timed(second)
        if r == 0:
            continue
        ours_t += t1 if first is ours else t2
        raw_t += t2 if first is ours else t1
    store.close()
    raw.close()
    n = per_round * rounds * size
    return {"ours_items_s": n / ours_t, "raw_items_s": n / raw_t, "ratio": raw_t / ours_t}


def _rss_child(path: str, saves: int, batch: int) -> None:
    """Run in a fresh interpreter: warm up, then ``saves`` saves; print RSS figures (KiB).

    ``batch`` 1 calls ``save()`` per item; more calls ``save_many()`` with that many.
    """
    store = NexusStore[Note, str](path, model=Note, durability="normal")
    template = make_notes(1, "x")[0]
    for i in range(2_000):
        store.save(template.model_copy(update={"id": f"w-{i:08d}"}))
    gc.collect()
    process = psutil.Process()
    base = process.memory_info().rss // 1024
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampled = base
    start = time.perf_counter()
    for first in range(0, saves, batch):
        items = [
            template.model_copy(update={"id": f"m-{i:08d}", "rank": i % 100})
            for i in range(first, min(saves, first + batch))
        ]
        if batch == 1:
            store.save(items[0])
        else:
            store.save_many(items)
        if first % 1000 < batch:
            sampled = max(sampled, process.memory_info().rss // 1024)
    elapsed = time.perf_counter() - start
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is the peak of the whole process life: it tells the peak of the run only if
    # the run set a new one; otherwise the samples taken every 1,000 saves do.
    peak = peak_after if peak_after > peak_before else sampled
    store.close()
    print(json.dumps({"base_kib": base, "peak_kib": peak, "seconds": elapsed}))


def bench_rss(tmp: Path, saves: int, batch: int) -> dict[str, float]:
    """Figure 5: peak RSS growth over ``saves`` saves, in a clean subprocess."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nexus_store.bench._store",
            "--rss-child",
            str(tmp / "rss.db"),
            str(saves),
            str(batch),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    growth = (figures["peak_kib"] - figures["base_kib"]) / 1024
    return {
        "saves": saves,
        "batch": batch,
        "growth_mib": growth,
        "saves_s": saves / figures["seconds"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run every figure and return them (``quick``: fewer ops, same shape)."""
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as name:
        tmp = Path(name)
        return {
            "save_full": bench_save(tmp, ops=400 if quick else 3_000),
            "save_normal": bench_save(tmp, ops=1_000 if quick else 5_000, durability="normal"),
            "save_many_100": bench_save_many(tmp, batches=40 if quick else 300, rounds=4),
            # --quick writes the 100k items with save_many(100) to finish in seconds.
            "rss_100k": bench_rss(tmp, saves=100_000, batch=100 if quick else 1),
        }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        _rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return
    results = run(args.quick)
    s, m, r = results["save_full"], results["save_many_100"], results["rss_100k"]
    c = results["save_normal"]
    print("nexus-store local store benchmark" + (" (quick)" if args.quick else ""))
    print(
        f"1. save() per op, durability full: {s['ours_ops_s']:,.0f} ops/s vs raw sqlite3 "
        f"{s['raw_ops_s']:,.0f} ops/s -> ratio {s['ratio']:.2f} (target >= 0.9)"
    )
    print(
        f"   (save() per op, durability normal, no fsync: {c['ours_ops_s']:,.0f} vs "
        f"{c['raw_ops_s']:,.0f} ops/s -> ratio {c['ratio']:.2f}: the CPU cost alone)"
    )
    print(
        f"2. save_many(100): {m['ours_items_s']:,.0f} items/s vs raw sqlite3 "
        f"{m['raw_items_s']:,.0f} items/s -> ratio {m['ratio']:.2f} (target >= 0.8)"
    )
    how = "save() calls" if r["batch"] == 1 else f"items via save_many({r['batch']})"
    print(
        f"5. peak RSS growth over {r['saves']:,} {how} (durability normal): "
        f"{r['growth_mib']:.2f} MiB (target <= 8 MiB; {r['saves_s']:,.0f} items/s)"
    )


if __name__ == "__main__":
    main()
