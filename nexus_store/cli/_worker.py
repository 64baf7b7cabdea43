"""``nexus-store worker``: drain a store file to a sync server from a daemon process.

The app process saves to the file; this process runs the background sync service
(WorkManager-like, the periodic floor lowered to ``--interval``) while it holds the file's
drain lease, so only one worker drains at a time and a second one takes over when the
first dies. Commits of the app wake it within milliseconds (``watchfiles`` on the WAL):
``CRITICAL`` saves go out at once, ``HIGH`` ones after ``--high-debounce``, the rest with
the periodic run. It prints one line per step (``nexus-store worker: ...``).

SIGTERM or SIGINT stop it cleanly: a run in progress gives its leased ops back, the lease
is released, exit code 0. Exit code 2: bad input (no such file, bad URL).
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
) -> None:
    """Drain the file's sync queue to the server in the background until stopped."""
    if not db.is_file():
        typer.echo(f"nexus-store worker: no such file: {db}", err=True)
        raise typer.Exit(2)
    if timeout >= lease_for:
        typer.echo("nexus-store worker: --timeout must be below --lease-for", err=True)
        raise typer.Exit(2)
    from ..backends._http import HttpBackend  # noqa: PLC0415 - keeps --help quick
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
    runner = SyncWorker(
        db,
        backend,
        config=config,
        lease_ttl=lease_ttl,
        lease_for=lease_for,
        watch_step_ms=watch_step_ms,
        announce=_say,
    )

    async def main() -> None:
        async with backend, anyio.create_task_group() as tg:
            # Handlers first: a signal that arrives while starting still stops cleanly.
            await tg.start(_stop_on_signal, tg.cancel_scope)
            await runner.run()

    anyio.run(main)
    raise typer.Exit(0)


async def _stop_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            _say(f"received {signal.Signals(signum).name}; stopping")
            scope.cancel()
            return
