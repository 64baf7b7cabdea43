"""Tiny reads from the event loop without a trip through a worker thread.

A read of a few microseconds (``PRAGMA schema_version``, one ``max()`` over a small table)
costs more in the hop to a worker thread and back than in SQLite, and on a busy machine
each hop waits for the scheduler. :func:`read_soon` runs it at once on the loop's thread
when the connection is free, and through a worker thread only when another thread holds
it (the loop never waits for the lock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

from .._database import Database

__all__ = ["read_soon"]

T = TypeVar("T")


async def read_soon(database: Database, read: Callable[[], T]) -> T:
    """``read()`` (a short read on ``database``): here if the connection is free, else in
    a worker thread."""
    if database.lock.acquire(blocking=False):
        try:
            return read()
        finally:
            database.lock.release()
    return await anyio.to_thread.run_sync(read)
