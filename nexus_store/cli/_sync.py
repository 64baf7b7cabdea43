"""``nexus-store sync``: one sync run of a store file against a sync server.

The command does not know the app's models, so it works on the file alone: it pushes
the queued ops as they are (already encoded) and applies pulled changes to the tables
through :class:`~nexus_store.sync.engine.RawCollection` (see there for how values are stored).
Schema migrations registered in the app are not applied here: ops queued under an
older schema version are sent as queued.

Exit codes: 0 the run finished and nothing failed; 1 something failed (ops waiting for a
retry, dead-lettered, a pull error, the remote paused, or the run stopped early); 2 bad
input (no such file, not a store, bad URL, unknown collection); 130 interrupted.

The last lines say what the file holds after the run (ops still queued, or an empty
queue), and until when the remote asked to be left alone, if it did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from .._database import Database
from .._exceptions import NexusStoreError
from .._priority import SyncPriority
from ..queue import OpState, PrioritySyncQueue, QueueStats
from ._app import app
from ._errors import BAD_INPUT, fail
from ._options import DbOption, RemoteOption, TokenOption

if TYPE_CHECKING:
    from ..sync.engine._progress import SyncSummary

_PRIORITIES = tuple(sorted(SyncPriority))


@app.command("sync")
def sync(  # noqa: PLR0917 - typer reads each option from a parameter
    db: DbOption,
    remote: RemoteOption,
    token: TokenOption = None,
    collection: Annotated[
        list[str] | None,
        typer.Option(help="A collection to sync (repeatable; default: every one in the file)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Most ops per push request.")] = 500,
    lease_for: Annotated[
        float, typer.Option(min=0.001, help="Seconds a pushed batch stays reserved.")
    ] = 120.0,
    budget: Annotated[
        float | None, typer.Option(min=0.001, help="Most seconds the run may take.")
    ] = None,
    pull: Annotated[bool, typer.Option(help="Pull remote changes after pushing.")] = True,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds per request.")] = 30.0,
    allow_insecure_http: Annotated[
        bool,
        typer.Option(
            help="Send the token over plain http:// to a non-loopback address (it crosses "
            "the network readable by anyone on the way)."
        ),
    ] = False,
) -> None:
    """Push the file's queued ops to the server (most urgent first), then pull changes."""
    console = Console()
    if not db.is_file():
        fail("sync", f"no such file: {db} (the app creates it when it opens a NexusStore on it)")
    try:
        code = anyio.run(
            _run,
            console,
            db,
            remote,
            token,
            collection or [],
            batch_size,
            lease_for,
            budget,
            pull,
            timeout,
            allow_insecure_http,
        )
    except KeyboardInterrupt:
        fail("sync", "interrupted; the ops in flight went back to the queue", 130)
    except _BadInputError as exc:
        fail("sync", str(exc))
    except BAD_INPUT as exc:
        fail("sync", str(exc))
    except NexusStoreError as exc:
        fail("sync", f"{type(exc).__name__}: {exc}", 1)
    raise typer.Exit(code)


class _BadInputError(Exception):
    """Input the command cannot work with (exit code 2)."""


async def _run(  # noqa: PLR0917 - forwarded command-line options
    console: Console,
    path: Path,
    remote: str,
    token: str | None,
    collections: list[str],
    batch_size: int,
    lease_for: float,
    budget: float | None,
    pull: bool,
    request_timeout: float,
    allow_insecure_http: bool,
) -> int:
    # Imported here so `nexus-store --help` stays quick.
    from ..backends._http import HttpBackend  # noqa: PLC0415
    from ..sync.engine._engine import EngineConfig  # noqa: PLC0415
    from ..sync.engine._progress import SyncProgress  # noqa: PLC0415
    from ..sync.engine._rawtable import RawCollection, discover_collections  # noqa: PLC0415
    from ..sync.engine._runner import SyncRunner  # noqa: PLC0415

    try:
        backend = HttpBackend(
            remote, token=token, timeout=request_timeout, allow_insecure_http=allow_insecure_http
        )
    except ValueError as exc:
        raise _BadInputError(str(exc)) from exc
    database = Database(path)
    try:
        found = discover_collections(database)
        chosen = collections or found
        unknown = sorted(set(chosen) - set(found))
        if unknown:
            raise _BadInputError(
                f"{path}: no collection {', '.join(map(repr, unknown))} "
                f"(found: {', '.join(found) or 'none'})"
            )
        if not chosen:
            raise _BadInputError(f"{path}: no store collections in this file")
        queue = PrioritySyncQueue(database)
        targets = [RawCollection(database, name, queue=queue) for name in chosen]
        runner = SyncRunner(
            targets,
            backend,
            lease_for=lease_for,
            budget=budget,
            pull=pull,
            config=EngineConfig(batch_size=batch_size),
        )
        with Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            disable=not console.is_terminal,
        ) as bars:
            tasks: dict[SyncPriority, TaskID] = {
                p: bars.add_task(p.name, total=0, note="") for p in _PRIORITIES
            }
            pull_task = bars.add_task("pulled", total=None, note="", visible=pull)
            files: dict[str, TaskID] = {}

            def show(progress: SyncProgress) -> None:
                for priority, counts in progress.per_priority.items():
                    bars.update(tasks[priority], completed=counts.done, total=counts.total)
                bars.update(pull_task, completed=progress.pulled)
                for transfer in progress.transfers:  # a bar per file, in bytes
                    task = files.get(transfer.op_id)
                    if task is None:
                        label = (transfer.name or transfer.sha256)[:9]
                        task = files[transfer.op_id] = bars.add_task(label, total=0, note="")
                    note = f"{transfer.kind.value} {transfer.state.value}"
                    if transfer.rate:
                        note += f" {transfer.rate / 1e6:.1f} MB/s"
                    if transfer.eta is not None and transfer.state.value == "running":
                        note += f" {transfer.eta:.0f}s left"
                    bars.update(task, completed=transfer.done, total=transfer.total, note=note)

            runner.progress.add_callback(show)
            async with backend:
                summary = await runner.run()
        remaining = queue.stats()
    finally:
        database.close()

    _report(console, path, remote, summary, remaining)
    return 0 if summary.ok else 1


def _report(
    console: Console, path: Path, remote: str, summary: SyncSummary, remaining: QueueStats
) -> None:
    """The run's table and closing lines (what the file holds after the run)."""
    table = Table(title=f"sync of {path.name} with {remote}")
    for column in ("priority", "pushed", "conflicts", "failed", "dead-lettered", "left"):
        table.add_column(column, justify="left" if column == "priority" else "right")
    for priority in _PRIORITIES:
        row = summary.per_priority[priority]
        left = remaining.count(priority, OpState.PENDING) + remaining.count(
            priority, OpState.LEASED
        )
        table.add_row(
            priority.name,
            str(row.pushed),
            str(row.conflicts),
            str(row.failed),
            str(row.dead_lettered),
            str(left),
        )
    console.print(table)
    console.print(
        f"pulled {summary.pulled} changes, {summary.requests} requests, "
        f"{summary.duration:.2f}s, stopped: {summary.stop_reason.value}"
    )
    if summary.uploaded or summary.downloaded:
        console.print(
            f"files: {summary.uploaded} uploaded, {summary.downloaded} downloaded, "
            f"{summary.transferred_bytes} bytes moved"
        )
    # Said from the file as it is after the run, never from what the run expected.
    if remaining.live:
        console.print(f"{remaining.live} ops still queued (of them {remaining.leased} leased)")
    else:
        console.print("nothing left to send")
    if summary.paused_until is not None:
        console.print(
            f"the remote asked to wait: nothing is sent to it before "
            f"{summary.paused_until:%Y-%m-%d %H:%M:%SZ}"
        )
    if remaining.dead:
        console.print(
            f"{remaining.dead} dead-lettered ops in the file "
            f"(see `nexus-store queue --db {os.fspath(path)}`)"
        )
    if summary.error:
        console.print(f"last error: {summary.error}")
