"""``nexus-store jobs``: the background work scheduled in a store file, and its run history.

Reads what the background sync service persisted in the file: WorkManager-like work
(``nx_work*``: unique name, state, next run, attempts, constraints), pending BGTask-like
requests and launches (``nx_bg_*``), and the worker's drain lease (``nx_worker_lease``).
Nothing is changed. Exit code 2: no such file, or not an SQLite database.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from .._database import Database
from .._exceptions import NexusStoreError
from ._app import app
from ._errors import fail
from ._options import DbOption

if TYPE_CHECKING:  # pragma: no cover
    from ..sync._task import TaskRun


def _tables(database: Database) -> set[str]:
    with database.reading() as conn:
        return {
            str(row[0])
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }


def _when(seconds: float | None) -> str:
    # Imported here so `nexus-store --help` stays quick.
    from ..sync._decisions import format_time  # noqa: PLC0415

    if seconds is None:
        return "-"
    return format_time(seconds)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


@app.command("jobs")
def jobs(
    db: DbOption,
    limit: Annotated[int, typer.Option(min=1, help="Most history rows to show.")] = 20,
) -> None:
    """Show the scheduled background work and the persisted run history."""
    # Piped output is not cut to 80 columns: names and times stay whole for grep and logs.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if not db.is_file():
        fail("jobs", f"no such file: {db} (the app creates it when it opens a NexusStore on it)")
    try:
        database = Database(db)
    except NexusStoreError as exc:
        fail("jobs", str(exc))
    try:
        tables = _tables(database)
        shown = False
        if "nx_work" in tables:
            shown = True
            _show_work(console, database, limit)
        if "nx_bg_history" in tables:
            shown = True
            _show_bgtask(console, database, limit)
        if "nx_worker_lease" in tables:
            _show_lease(console, database)
        if not shown:
            console.print(f"{db}: no background work was ever scheduled in this file")
    finally:
        database.close()


def _show_work(console: Console, database: Database, limit: int) -> None:
    from ..sync.workmanager._adapter import _run_to_task_run  # noqa: PLC0415
    from ..sync.workmanager._decisions import next_schedule_time  # noqa: PLC0415
    from ..sync.workmanager._persistence import WorkStore  # noqa: PLC0415
    from ..sync.workmanager._records import WorkQuery  # noqa: PLC0415
    from ..sync.workmanager._states import WorkState  # noqa: PLC0415

    store = WorkStore(database)
    unfinished = frozenset({WorkState.ENQUEUED, WorkState.RUNNING, WorkState.BLOCKED})
    specs = store.find(WorkQuery(states=unfinished))
    table = Table(title="scheduled work (WorkManager-like)")
    table.add_column("work", no_wrap=True)
    for column in ("task", "state", "next run", "every", "attempts", "waits for"):
        table.add_column(column)
    for spec in specs:
        request = spec.request
        constraints = request.constraints
        needs = [
            name
            for name, on in (
                (f"network {constraints.required_network_type.value}", True),
                ("charging", constraints.requires_charging),
                ("battery ok", constraints.requires_battery_not_low),
                ("storage ok", constraints.requires_storage_not_low),
                ("idle", constraints.requires_device_idle),
            )
            if on and name != "network not_required"
        ]
        kind = "expedited" if request.expedited else ""
        table.add_row(
            spec.unique_name or spec.id[:8],
            request.worker_name,
            spec.state.value + (f" ({kind})" if kind else ""),
            _when(next_schedule_time(spec)) if spec.state is WorkState.ENQUEUED else "-",
            _duration(request.interval),
            str(spec.run_attempt_count),
            ", ".join(needs) or "-",
        )
    if specs:
        console.print(table)
    else:
        console.print("no scheduled work (WorkManager-like)")
    _show_runs(console, [_run_to_task_run(r) for r in store.runs(limit=limit)], "work runs")


def _show_bgtask(console: Console, database: Database, limit: int) -> None:
    from ..sync.bgtask._adapter import _record_to_task_run  # noqa: PLC0415
    from ..sync.bgtask._persistence import _Tables  # noqa: PLC0415

    rows = _Tables(database, history_limit=max(limit, 1000))
    pending = rows.load_pending()
    if pending:
        table = Table(title="pending requests (BGTask-like)")
        for column in ("identifier", "kind", "not before"):
            table.add_column(column)
        for _, request in pending:
            table.add_row(request.identifier, request.kind.value, _when(request.earliest_begin))
        console.print(table)
    else:
        console.print("no pending requests (BGTask-like)")
    history = [_record_to_task_run(r) for r in rows.history(None, limit)]
    _show_runs(console, history, "launches")


def _show_runs(console: Console, runs: list[TaskRun], title: str) -> None:
    if not runs:
        console.print(f"no {title} yet")
        return
    table = Table(title=f"{title} (newest first)")
    table.add_column("started", no_wrap=True)
    table.add_column("task", no_wrap=True)
    for column in ("source", "outcome", "took", "message"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            _when(run.started_at),
            run.task_id,
            run.source[:40],
            run.outcome,
            _duration(run.duration),
            (run.message or "")[:80],
        )
    console.print(table)


def _show_lease(console: Console, database: Database) -> None:
    with database.reading() as conn:
        row = conn.execute(
            "SELECT holder, pid, expires_at FROM nx_worker_lease WHERE name = 'drain'"
        ).fetchone()
    if row is None:
        console.print("drain lease: free (no worker is draining this file)")
        return
    holder, pid, expires_at = row
    left = expires_at - time.time()
    state = f"expires in {left:.1f} s" if left > 0 else f"expired {-left:.1f} s ago"
    console.print(f"drain lease: held by {holder} (pid {pid}), {state}")
