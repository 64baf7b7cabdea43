"""An app process for the fault soak: saves notes at a steady pace until killed.

Usage: ``python soak_writer.py DB PREFIX RATE``. Prints each note's id after its save
returned (the save committed), so the soak knows exactly which writes were acknowledged.
"""

from __future__ import annotations

import sys
import time

from pydantic import BaseModel

from nexus_store import NexusStore, SyncPriority


class Note(BaseModel):
    id: str
    text: str = ""


def main() -> None:
    """Save ``PREFIX-0``, ``PREFIX-1``, ... at ``RATE`` per second, forever."""
    db, prefix, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    priorities = [SyncPriority.CRITICAL, SyncPriority.HIGH, SyncPriority.NORMAL, SyncPriority.LOW]
    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)  # pacing, like an app reacting to its user
        note = Note(id=f"{prefix}-{n}", text=f"written by {prefix} as number {n}")
        store.save(note, priority=priorities[n % len(priorities)])
        print(note.id, flush=True)
        n += 1


if __name__ == "__main__":
    main()
