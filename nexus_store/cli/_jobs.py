"""``nexus-store jobs``: the background jobs of a store file; switch them, run them, their history.

- ``jobs list --db F`` (also plain ``jobs --db F``): the jobs the file knows (``nx_job``:
  name, description, on/off), the scheduled work (``nx_work*``: unique name, state, next
  run, attempts, constraints), pending BGTask-like requests and launches (``nx_bg_*``),
  the worker's drain lease and the run history. Changes nothing.
- ``jobs enable|disable JOB --db F``: switch a job on or off (kept in the file across
  restarts); ``jobs run JOB --db F``: ask for a run now. The running service (the app's,
  or ``nexus-store worker``) applies the switch at once (the commit wakes it); with none
  running, at its next start.
- ``jobs history JOB --db F``: the job's runs: start, end, duration, outcome, message,
  attempt and stop reason.

Exit code 2: no such file, not an SQLite database, or a job the file does not know.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
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


jobs_app = typer.Typer(
    name="jobs",
    help="Background jobs: list, enable, disable, run now, history.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs_app)

LimitOption = Annotated[int, typer.Option(min=1, help="Most history rows to show.")]


def _console() -> Console:
    # Piped output is not cut to 80 columns: names and times stay whole for grep and logs.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _open(db: Path, command: str) -> Database:
    if not db.is_file():
        fail(command, f"no such file: {db} (the app creates it when it opens a NexusStore on it)")
    try:
        return Database(db)
    except NexusStoreError as exc:
        fail(command, str(exc))


@jobs_app.callback(invoke_without_command=True)
def jobs(
    ctx: typer.Context,
    db: Annotated[
        Path | None, typer.Option("--db", help="The store's database file (lists its jobs).")
    ] = None,
    limit: LimitOption = 20,
) -> None:
    """Show the background jobs, the scheduled work and the run history (`jobs list`)."""
    if ctx.invoked_subcommand is not None:
        return
    if db is None:
        fail("jobs", "give --db FILE, or a subcommand: list, enable, disable, run, history")
    _list(db, limit)


@jobs_app.command("list")
def list_jobs(db: DbOption, limit: LimitOption = 20) -> None:
    """Show the background jobs, the scheduled work and the run history."""
    _list(db, limit)


def _list(db: Path, limit: int) -> None:
    console = _console()
    database = _open(db, "jobs")
    try:
        tables = _tables(database)
        shown = False
        if "nx_job" in tables:
            shown = True
            _show_jobs(console, database)
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


def _show_jobs(console: Console, database: Database) -> None:
    from ..sync._jobs import JobTable  # noqa: PLC0415 - keeps --help quick

    table = Table(title="jobs")
    table.add_column("job", no_wrap=True)
    for column in ("name", "on", "schedule", "constraints", "description"):
        table.add_column(column)
    for row in JobTable(database).rows():
        info = row.info()
        schedule = info.schedule
        if schedule is None:
            when = "on saves and the periodic run" if row.job_id == "nexus-store.sync" else "-"
        elif schedule.kind == "periodic":
            when = f"every {_duration(schedule.interval.total_seconds())}"
            if schedule.flex is not None:
                when += f" (flex {_duration(schedule.flex.total_seconds())})"
        else:
            when = f"once, after {_duration(schedule.delay.total_seconds())}"
        run = " (run asked for)" if info.run_requested else ""
        table.add_row(
            row.job_id,
            info.name,
            ("yes" if info.enabled else "no") + run,
            when,
            ", ".join(info.constraints.words()) or "-",
            info.description or "-",
        )
    console.print(table)


def _control(db: Path, job: str, command: str, enabled: bool | None) -> None:
    from ..sync._jobs import JobTable  # noqa: PLC0415 - keeps --help quick

    database = _open(db, f"jobs {command}")
    try:
        table = JobTable(database)
        try:
            if enabled is None:
                table.request_run(job, now=time.time())
            else:
                table.set_enabled(job, enabled, now=time.time())
        except NexusStoreError as exc:
            fail(f"jobs {command}", str(exc))
    finally:
        database.close()
    what = {None: "a run was asked for", True: "switched on", False: "switched off"}[enabled]
    typer.echo(f"{job}: {what} (a running service applies it at once; otherwise at its next start)")


JobArgument = Annotated[str, typer.Argument(help="The job's id (see `nexus-store jobs list`).")]


@jobs_app.command("enable")
def enable(job: JobArgument, db: DbOption) -> None:
    """Switch a job on (kept in the file across restarts)."""
    _control(db, job, "enable", True)


@jobs_app.command("disable")
def disable(job: JobArgument, db: DbOption) -> None:
    """Switch a job off (kept in the file across restarts); the sync job off keeps saves queued."""
    _control(db, job, "disable", False)


@jobs_app.command("run")
def run(job: JobArgument, db: DbOption) -> None:
    """Ask for a run of the job now (expedited, by the service that runs it)."""
    _control(db, job, "run", None)


@jobs_app.command("history")
def history(job: JobArgument, db: DbOption, limit: LimitOption = 20) -> None:
    """Show a job's runs: start, end, duration, outcome, message, attempt, stop reason."""
    console = _console()
    database = _open(db, "jobs history")
    try:
        if "nx_work_run" not in _tables(database):
            console.print(f"no runs of {job} yet")
            return
        from ..sync.workmanager._adapter import _run_to_task_run  # noqa: PLC0415
        from ..sync.workmanager._persistence import WorkStore  # noqa: PLC0415

        runs = [
            _run_to_task_run(r)
            for r in WorkStore(database).runs(limit=10_000)
            if r.worker_name == job
        ][:limit]
    finally:
        database.close()
    if not runs:
        console.print(f"no runs of {job} yet")
        return
    table = Table(title=f"runs of {job} (newest first)")
    table.add_column("started", no_wrap=True)
    table.add_column("ended", no_wrap=True)
    for column in ("took", "outcome", "attempt", "stop reason", "message"):
        table.add_column(column)
    for entry in runs:
        table.add_row(
            _when(entry.started_at),
            _when(entry.ended_at),
            _duration(entry.duration),
            entry.outcome,
            "-" if entry.attempt is None else str(entry.attempt),
            entry.stop_reason or "-",
            entry.message or "-",
        )
    console.print(table)
