"""``nexus-store queue``: what a database file's sync queue holds (and its quarantine)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._exceptions import NexusStoreError
from .._priority import SyncPriority
from .._quarantine import Quarantine, QuarantinedChange
from ..queue import OpState, PrioritySyncQueue, QueuedOp, QueueStats
from ._app import app
from ._errors import fail
from ._options import DbOption

_STATES = (OpState.PENDING, OpState.LEASED, OpState.DEAD)


def _stats_table(stats: QueueStats) -> Table:
    title = "sync queue" + (f" of {stats.collection!r}" if stats.collection else "")
    table = Table(title=title)
    table.add_column("priority")
    for state in _STATES:
        table.add_column(state.value, justify="right")
    table.add_column("total", justify="right")
    for priority in SyncPriority:
        counts = [stats.count(priority, state) for state in _STATES]
        table.add_row(priority.name, *map(str, counts), str(sum(counts)))
    table.add_row(
        "[bold]all[/]", *(str(stats.count(None, state)) for state in _STATES), str(stats.total)
    )
    return table


def _dead_table(dead: list[QueuedOp]) -> Table:
    table = Table(title=f"dead letters ({len(dead)})")
    for column in ("op id", "collection", "item", "priority", "attempts", "kind", "reason"):
        table.add_column(column)
    for op in dead:
        table.add_row(
            op.op_id,
            op.collection,
            str(op.item_id),
            op.priority.name,
            str(op.attempts),
            op.error_kind.value if op.error_kind else "",
            op.last_error or "",
        )
    return table


def _quarantine_table(kept: list[QuarantinedChange]) -> Table:
    table = Table(title=f"quarantined changes ({len(kept)})")
    for column in ("id", "collection", "item", "version", "attempts", "reason"):
        table.add_column(column)
    for entry in kept:
        table.add_row(
            str(entry.id),
            entry.change.collection,
            str(entry.change.item_id),
            str(entry.change.version),
            str(entry.attempts),
            escape(entry.reason),
        )
    return table


def _as_json(stats: QueueStats, dead: list[QueuedOp], kept: list[QuarantinedChange]) -> str:
    return json.dumps(
        {
            "collection": stats.collection,
            "total": stats.total,
            "counts": {p.name: {s.value: stats.count(p, s) for s in _STATES} for p in SyncPriority},
            "oldest_pending_age": stats.oldest_pending_age,
            "dead": [
                {
                    "op_id": op.op_id,
                    "collection": op.collection,
                    "item_id": op.item_id,
                    "priority": op.priority.name,
                    "attempts": op.attempts,
                    "error_kind": op.error_kind.value if op.error_kind else None,
                    "reason": op.last_error,
                }
                for op in dead
            ],
            "quarantined": [
                {
                    "id": entry.id,
                    "collection": entry.change.collection,
                    "item_id": entry.change.item_id,
                    "version": entry.change.version,
                    "attempts": entry.attempts,
                    "reason": entry.reason,
                }
                for entry in kept
            ],
        },
        indent=2,
    )


@app.command("queue")
def queue(
    db: DbOption,
    collection: Annotated[
        str | None, typer.Option("--collection", help="Only this collection's ops.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show the sync queue: ops per priority and state, oldest pending age, dead letters,
    and pulled changes kept in quarantine."""
    if not db.is_file():
        fail("queue", f"no database file at {db} (the app creates it with a NexusStore)")
    try:
        # create=False: inspecting a file must not add a queue table to it.
        with PrioritySyncQueue(db, durability="normal", create=False) as sync_queue:
            stats = sync_queue.stats(collection)
            dead = sync_queue.dead(collection)
            with sync_queue.database.reading() as conn:
                kept = Quarantine.list(conn, collection)
    except NexusStoreError as exc:
        fail("queue", str(exc))
    if as_json:
        typer.echo(_as_json(stats, dead, kept))
        return
    console = Console()
    console.print(_stats_table(stats))
    age = stats.oldest_pending_age
    console.print("oldest pending op: " + ("none" if age is None else f"{age:,.1f} s old"))
    if dead:
        console.print(_dead_table(dead))
    else:
        console.print("dead letters: none")
    if kept:
        console.print(_quarantine_table(kept))
    else:
        console.print("quarantined changes: none")
