"""The writer the crash test kills: saves records forever, printing each acknowledged id.

Usage: ``python crash_writer.py DB_PATH PREFIX SEED``. Prints ``ready`` once the store is
open, then after every ``save``/``save_many`` returns one line ``ack ID [ID...]``. Some
writes update records acknowledged earlier in the same run. The parent test SIGKILLs this
process at a random point and checks the file.
"""

from __future__ import annotations

import random
import sys

from pydantic import BaseModel

from nexus_store import NexusStore, SyncPriority


class Record(BaseModel):
    """A record written as part of a batch of ``size`` records."""

    id: str
    batch: str
    size: int
    version: int = 0
    body: str


def main() -> None:
    """Write until killed."""
    path, prefix, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    store = NexusStore[Record, str](path, model=Record)
    stream = store.watch()  # as an app showing its data would: saves are then logged too
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    written: list[Record] = []
    n = 0
    while True:
        priority = rng.choice(list(SyncPriority))
        if written and rng.random() < 0.2:
            old = rng.choice(written)
            item = old.model_copy(
                update={"version": old.version + 1, "body": "u" * rng.randint(1, 3000)}
            )
            store.save(item, priority=priority)
            out.write(f"ack {item.id}\n")
        else:
            size = rng.choice([1, 1, 1, 2, 5, 20])
            batch = f"{prefix}-{n}"
            items = [
                Record(id=f"{batch}-{j}", batch=batch, size=size, body="x" * rng.randint(1, 3000))
                for j in range(size)
            ]
            if size == 1:
                store.save(items[0], priority=priority)
            else:
                store.save_many(items, priority=priority)
            written.extend(items)
            out.write("ack " + " ".join(item.id for item in items) + "\n")
            n += 1
        out.flush()
        stream.get(timeout=0)  # keep reading, as a watcher does


if __name__ == "__main__":
    main()
