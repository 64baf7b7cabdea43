"""``nexus-store worker``: drain a store file to a sync server from a daemon process.

The app process saves to the file; this process runs the background sync service
(WorkManager-like, the periodic floor lowered to ``--interval``) while it holds the file's
drain lease, so only one worker drains at a time and a second one takes over when the
first dies. Commits of the app wake it within milliseconds (``watchfiles`` on the WAL):
``CRITICAL`` saves go out at once, ``HIGH`` ones after ``--high-debounce``, the rest with
the periodic run. It prints one line per step (``nexus-store worker: ...``).

Queued payloads of an older schema version are upgraded before they are sent with the
app's migrations: ``--migrations module:attr`` names them once (the file records it), or
the path the app's store recorded is used. Migrations that cannot be imported stop the
worker before it sends anything (exit code 2).

SIGTERM or SIGINT stop it cleanly: a run in progress gives its leased ops back, the lease
is released, exit code 0. Exit code 2: bad input (no such file, bad URL, migrations that
cannot be imported).
"""

from __future__ import annotations

import signal
from datetime import timedelta
from typing import Annotated

import anyio
import anyio.abc
import typer

from ._app import app
from ._options import DbOption, RemoteOption, TokenOption

_PREFIX = "nexus-store worker: "


def _say(text: str) -> None:
    print(_PREFIX + text, flush=True)


@app.command("worker")
def worker(  # noqa: PLR0917 - typer reads each option from a parameter
    db: DbOption,
    remote: RemoteOption,
    token: TokenOption = None,
    interval: Annotated[
        float, typer.Option(min=1.0, help="Seconds between periodic runs (NORMAL and LOW ops).")
    ] = 300.0,
    high_debounce: Annotated[
        float, typer.Option(min=0.0, help="Seconds a HIGH save waits for more before a run.")
    ] = 0.5,
    lease_ttl: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds the drain lease lasts unrenewed (takeover delay)."),
    ] = 10.0,
    lease_for: Annotated[
        float, typer.Option(min=0.1, help="Seconds a pushed batch stays reserved.")
    ] = 60.0,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds per request.")] = 30.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Most ops per push request.")] = 500,
    watch_step_ms: Annotated[
        int, typer.Option(min=1, help="Milliseconds the file watcher batches changes over.")
    ] = 10,
    migrations: Annotated[
        str | None,
        typer.Option(
            help="The app's nexus_store.Migrations as module:attribute (recorded in the file; "
            "later workers find it there). Default: what the file records."
        ),
    ] = None,
) -> None:
    """Drain the file's sync queue to the server in the background until stopped."""
    if not db.is_file():
        typer.echo(f"nexus-store worker: no such file: {db}", err=True)
        raise typer.Exit(2)
    if timeout >= lease_for:
        typer.echo("nexus-store worker: --timeout must be below --lease-for", err=True)
        raise typer.Exit(2)
    from .._exceptions import MigrationError  # noqa: PLC0415 - keeps --help quick
    from ..backends._http import HttpBackend  # noqa: PLC0415
    from ..sync._worker import SyncWorker, worker_config  # noqa: PLC0415

    try:
        backend = HttpBackend(remote, token=token, timeout=timeout)
    except ValueError as exc:
        typer.echo(f"nexus-store worker: {exc}", err=True)
        raise typer.Exit(2) from exc
    config = worker_config(
        timedelta(seconds=interval),
        high_priority_debounce=timedelta(seconds=high_debounce),
        batch_size=batch_size,
    )
    try:
        runner = SyncWorker(
            db,
            backend,
            config=config,
            lease_ttl=lease_ttl,
            lease_for=lease_for,
            watch_step_ms=watch_step_ms,
            announce=_say,
            migrations=migrations,
        )
    except MigrationError as exc:
        typer.echo(f"nexus-store worker: {exc}", err=True)
        raise typer.Exit(2) from exc

    async def main() -> None:
        async with backend, anyio.create_task_group() as tg:
            # Handlers first: a signal that arrives while starting still stops cleanly.
            await tg.start(_stop_on_signal, tg.cancel_scope)
            await runner.run()

    try:
        anyio.run(main)
    except (MigrationError, BaseExceptionGroup) as exc:
        found = _migration_error(exc)
        if found is None:
            raise
        typer.echo(f"nexus-store worker: {found}; pass --migrations module:attr", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(0)


def _migration_error(exc: BaseException) -> BaseException | None:
    """The MigrationError that stopped the worker (task groups wrap it), if that was it."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _migration_error(inner)
            if found is not None:
                return found
        return None
    from .._exceptions import MigrationError  # noqa: PLC0415 - keeps --help quick

    return exc if isinstance(exc, MigrationError) else None


async def _stop_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            _say(f"received {signal.Signals(signum).name}; stopping")
            scope.cancel()
            return
