"""``nexus-store dashboard``: a live web page over a store file.

Serves the page on 127.0.0.1 (``--host`` to change, with care: the page steers the sync)
at a random port unless ``--port`` is given, and prints its URL with a random access
token. With ``--remote`` the same process also drains the file to that server (the
worker, see ``nexus-store worker``), and the page shows that worker's live status.
Without it the page reads and steers the file: a service in the app or a worker applies
its switches. Ctrl-C stops it. Exit code 2: no such file, not a store file.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import anyio
import anyio.abc
import typer

from .._database import Database
from ._app import app
from ._errors import BAD_INPUT, fail
from ._options import DbOption, TokenOption


def check_file(db: Path, command: str) -> None:
    """Refuse a missing file or one that is not a store (exit code 2)."""
    if not db.is_file():
        fail(command, f"no such file: {db} (the app creates it when it opens a NexusStore on it)")
    try:
        Database(db, durability="normal").close()
    except BAD_INPUT as exc:
        fail(command, str(exc))


def print_url(url: str) -> None:
    """Print the page's URL (its token included) for the person who started it."""
    typer.echo(f"dashboard: {url}", err=False)


@app.command("dashboard")
def dashboard(
    db: DbOption,
    remote: Annotated[
        str | None,
        typer.Option(help="Also drain the file to this sync server (as `nexus-store worker`)."),
    ] = None,
    token: TokenOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 0,
) -> None:
    """Serve a live dashboard of the file (sync status, queue, jobs, dead letters...)."""
    check_file(db, "dashboard")
    from ..dashboard import serve_dashboard  # noqa: PLC0415 - keeps --help quick

    if remote is not None:
        from ._worker import run_worker_with_dashboard  # noqa: PLC0415

        run_worker_with_dashboard(db, remote, token, host=host, port=port)
        raise typer.Exit(0)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(_stop_on_signal, tg.cancel_scope)
            await serve_dashboard(db, host=host, port=port, on_ready=print_url)
            tg.cancel_scope.cancel()

    anyio.run(main)
    raise typer.Exit(0)


async def _stop_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return
