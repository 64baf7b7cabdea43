"""The writer of the lock-loss crash test: two stores and a queue on one file, in one process.

Usage: ``python lockloss_writer.py DB_PATH PREFIX``. Opens two stores (two models, each with
its own connection, as two parts of an app would) and a bare queue on the same file, and a
change stream; prints ``ready``. Then reads commands from stdin: ``save N`` makes N saves,
alternating between the stores, and prints ``ack ID`` after each one returns, then
``done``. The test SIGKILLs it while it saves and counts what was lost.
"""

from __future__ import annotations

import sys

from pydantic import BaseModel

from nexus_store import NexusStore, PrioritySyncQueue


class Note(BaseModel):
    """One model."""

    id: str
    text: str


class Task(BaseModel):
    """Another model, in the same file."""

    id: str
    done: bool = False


def main() -> None:
    """Serve commands until killed (or stdin closes)."""
    path, prefix = sys.argv[1], sys.argv[2]
    notes = NexusStore[Note, str](path, model=Note)
    tasks = NexusStore[Task, str](path, model=Task)
    queue = PrioritySyncQueue(path)
    stream = notes.watch()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    n = 0
    for line in sys.stdin:
        count = int(line.split()[1])
        for _ in range(count):
            key = f"{prefix}-{n}"
            if n % 2:
                tasks.save(Task(id=key, done=bool(n % 3)))
                out.write(f"ack task {key}\n")
            else:
                notes.save(Note(id=key, text="x" * (n % 500)))
                out.write(f"ack note {key}\n")
            out.flush()
            n += 1
        queue.stats()
        stream.get(timeout=0)
        out.write("done\n")
        out.flush()


if __name__ == "__main__":
    main()
