"""What the dashboard's buttons do to the store's file.

Each action is one short transaction on the file, so it works the same whether a service
runs in this process, in the app, in a worker, or nowhere:

- dead letters: retry (re-enqueued at the back, same op id) or discard;
- quarantined changes: retry (applied now if the file's collection takes it, else kept
  with the new reason) or discard;
- jobs: enable, disable, run now (rows of ``nx_job``; a running service applies them at
  once, see :mod:`nexus_store.sync._jobs`).
"""

from __future__ import annotations

import time

from .._database import Database
from .._exceptions import NexusStoreError
from .._quarantine import Quarantine
from ..queue import PrioritySyncQueue
from ..sync._jobs import JobTable
from ..sync.engine._rawtable import RawCollection

__all__ = ["ActionError", "apply_action"]

ACTIONS = ("retry", "discard", "enable", "disable", "run")


class ActionError(NexusStoreError):
    """The action cannot be done (no such op, change or job; an unknown verb)."""


def dead_letter(queue: PrioritySyncQueue, op_id: str, verb: str) -> str:
    """Retry or discard one dead op."""
    if not any(op.op_id == op_id for op in queue.dead()):
        raise ActionError(f"no dead op {op_id!r}")
    if verb == "retry":
        queue.retry_dead([op_id])
        return f"op {op_id} goes out again"
    queue.discard([op_id])
    return f"op {op_id} discarded"


def quarantined(database: Database, queue: PrioritySyncQueue, row_id: int, verb: str) -> str:
    """Retry (apply now if it fits) or discard one quarantined change."""
    with database.transaction() as conn:
        found = [q for q in Quarantine.list(conn) if q.id == row_id]
        if not found:
            raise ActionError(f"no quarantined change {row_id}")
        Quarantine.forget(conn, [row_id])
        if verb == "discard":
            return f"change {row_id} discarded"
        change = found[0].change
        collection = RawCollection(database, change.collection, queue=queue)
        applied, kept = collection.apply_pulled([change])
    if kept:
        return f"change {row_id} still does not fit; kept with the new reason"
    return f"change {row_id} applied ({len(applied)} item)"


def job(database: Database, job_id: str, verb: str) -> str:
    """Switch a job on or off, or ask for a run."""
    table = JobTable(database)
    if verb == "run":
        table.request_run(job_id, now=time.time())
        return f"{job_id}: a run was asked for"
    table.set_enabled(job_id, verb == "enable", now=time.time())
    return f"{job_id}: switched {'on' if verb == 'enable' else 'off'}"


def apply_action(
    database: Database, queue: PrioritySyncQueue, target: str, key: str, verb: str
) -> str:
    """Do ``verb`` on ``target`` (``dead``, ``quarantine`` or ``jobs``) ``key``.

    Raises:
        ActionError: an unknown target or verb, or nothing under ``key``.
        UnknownWorkError: no such job.
    """
    if target == "dead" and verb in ("retry", "discard"):
        return dead_letter(queue, key, verb)
    if target == "quarantine" and verb in ("retry", "discard"):
        try:
            row_id = int(key)
        except ValueError as exc:
            raise ActionError(f"no quarantined change {key!r}") from exc
        return quarantined(database, queue, row_id, verb)
    if target == "jobs" and verb in ("enable", "disable", "run"):
        return job(database, key, verb)
    raise ActionError(f"cannot {verb} {target}")
