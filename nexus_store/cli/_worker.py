"""``nexus-store worker``: drain a store file to a sync server from a daemon process.

The app process saves to the file; this process runs the background sync service
(WorkManager-like, the periodic floor lowered to ``--interval``) while it holds the file's
drain lease, so only one worker drains at a time and a second one takes over when the
first dies. Commits of the app wake it within milliseconds (``watchfiles`` on the WAL):
``CRITICAL`` saves go out at once, ``HIGH`` ones after ``--high-debounce``, the rest with
the periodic run. It logs one line per step and one per sync run to stdout: a failed run
says why (the error), when, and when the next attempt is due, with the same outcome that
``nexus-store jobs`` shows for it. ``--log-format json`` prints one JSON object per line instead.

Queued payloads of an older schema version are upgraded before they are sent with the
app's migrations: ``--migrations module:attr`` names them once (the file records it), or
the path the app's store recorded is used. Migrations that cannot be imported stop the
worker before it sends anything (exit code 2).

SIGTERM or SIGINT stop it cleanly: a run in progress gives its leased ops back, the lease
is released, exit code 0. Exit code 2: bad input (no such file, not a store, bad URL,
migrations that cannot be imported).
"""

from __future__ import annotations

import logging
import signal
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import anyio.abc
import typer

from .._database import Database
from .._gc import set_gc_pause
from ._app import app
from ._errors import BAD_INPUT, fail
from ._logging import LogFormat, LogLevel, configure_logging, iso_time
from ._options import TokenOption

if TYPE_CHECKING:  # pragma: no cover
    from ..sync._worker import RunReport

_log = logging.getLogger("nexus_store.worker")


def _say(text: str) -> None:
    _log.info("%s", text)


def _report(report: RunReport) -> None:
    """One line per sync run: its outcome as the run history has it, and why it failed."""
    run, event = report.run, report.event
    ended = run.ended_at if run.ended_at is not None else run.started_at
    next_at = report.next_attempt_at
    fields: dict[str, object] = {
        "event": "sync_run",
        "outcome": report.outcome,
        "work": run.source,
        "started_at": iso_time(run.started_at),
        "ended_at": iso_time(ended),
        "duration": None if run.duration is None else round(run.duration, 3),
        "next_attempt_at": None if next_at is None else iso_time(next_at),
    }
    summary = event.summary if event is not None else None
    if summary is not None:
        fields.update(
            pushed=summary.pushed,
            pulled=summary.pulled,
            failed=summary.failed,
            dead_lettered=summary.dead_lettered,
            uploaded=summary.uploaded,
            downloaded=summary.downloaded,
            transferred_bytes=summary.transferred_bytes,
            stop_reason=summary.stop_reason.value,
            error=summary.error,
        )
    what = (event.message if event is not None else "") or run.message or run.outcome
    next_text = f"; next attempt at {iso_time(next_at)}" if next_at is not None else ""
    if report.failed:
        why = run.message or what
        fields["error"] = fields.get("error") or why
        _log.warning(
            "sync run failed (%s) at %s: %s%s",
            report.outcome,
            iso_time(ended),
            why,
            next_text,
            extra={"fields": fields},
        )
    else:
        _log.info(
            "sync run succeeded at %s: %s%s",
            iso_time(ended),
            what,
            next_text,
            extra={"fields": fields},
        )


worker_app = typer.Typer(
    name="worker",
    help="Drain a store file to a sync server in the background; install it as a service.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(worker_app)


@worker_app.callback(invoke_without_command=True)
def worker(  # noqa: PLR0915, PLR0917 - typer reads each option from a parameter
    ctx: typer.Context,
    db: Annotated[Path | None, typer.Option("--db", help="The store's database file.")] = None,
    remote: Annotated[str | None, typer.Option(help="The sync server's base URL.")] = None,
    token: TokenOption = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="Read the bearer token from this file (e.g. systemd's credentials).",
            envvar="NEXUS_STORE_TOKEN_FILE",
        ),
    ] = None,
    token_keyring: Annotated[
        str | None,
        typer.Option(help="Read the bearer token from the OS keyring under this name."),
    ] = None,
    interval: Annotated[
        float, typer.Option(min=1.0, help="Seconds between periodic runs (NORMAL and LOW ops).")
    ] = 300.0,
    high_debounce: Annotated[
        float, typer.Option(min=0.0, help="Seconds a HIGH save waits for more before a run.")
    ] = 0.5,
    lease_ttl: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds the drain lease lasts unrenewed (takeover delay)."),
    ] = 30.0,
    lease_for: Annotated[
        float, typer.Option(min=0.1, help="Seconds a pushed batch stays reserved.")
    ] = 60.0,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds per request.")] = 30.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Most ops per push request.")] = 500,
    watch_step_ms: Annotated[
        int, typer.Option(min=1, help="Milliseconds the file watcher batches changes over.")
    ] = 10,
    log_level: Annotated[
        LogLevel, typer.Option(help="The least severe log lines shown.", case_sensitive=False)
    ] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat, typer.Option(help="text lines, or one JSON object per line.")
    ] = LogFormat.TEXT,
    allow_insecure_http: Annotated[
        bool,
        typer.Option(
            help="Send the token over plain http:// to a non-loopback address (it crosses "
            "the network readable by anyone on the way)."
        ),
    ] = False,
    migrations: Annotated[
        str | None,
        typer.Option(
            help="The app's nexus_store.Migrations as module:attribute (recorded in the file; "
            "later workers find it there). Default: what the file records."
        ),
    ] = None,
    dashboard: Annotated[
        bool,
        typer.Option(help="Also serve the live dashboard (prints its URL with an access token)."),
    ] = False,
    dashboard_host: Annotated[str, typer.Option(help="The dashboard's address.")] = "127.0.0.1",
    dashboard_port: Annotated[
        int, typer.Option(min=0, max=65535, help="The dashboard's port (0: any free one).")
    ] = 0,
) -> None:
    """Drain the file's sync queue to the server in the background until stopped.

    `worker install|uninstall|status` register it with the OS's service manager.
    """
    if ctx.invoked_subcommand is not None:
        return
    if db is None or remote is None:
        fail("worker", "give --db FILE and --remote URL (or a subcommand: install, status...)")
    if token is None and (token_file is not None or token_keyring is not None):
        from ._worker_install import read_token  # noqa: PLC0415

        try:
            token = read_token(token_file, token_keyring)
        except ValueError as exc:
            fail("worker", str(exc))
    if not db.is_file():
        fail("worker", f"no such file: {db} (the app creates it when it opens a NexusStore on it)")
    if timeout >= lease_for:
        fail("worker", "--timeout must be below --lease-for")
    try:
        Database(db, durability="normal").close()  # a store file at all? say so now
    except BAD_INPUT as exc:
        fail("worker", str(exc))
    configure_logging("nexus-store worker", log_level, log_format)
    set_gc_pause(True)  # the worker owns its process: bulk reads may pause the collector
    from .._exceptions import MigrationError  # noqa: PLC0415 - keeps --help quick
    from ..backends._http import HttpBackend  # noqa: PLC0415
    from ..sync._worker import SyncWorker, worker_config  # noqa: PLC0415

    try:
        backend = HttpBackend(
            remote, token=token, timeout=timeout, allow_insecure_http=allow_insecure_http
        )
    except ValueError as exc:
        fail("worker", str(exc))
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
            on_run=_report,
            migrations=migrations,
        )
    except MigrationError as exc:
        fail("worker", str(exc))

    def live_status() -> str:
        service = runner.service
        return service.status.value if service is not None else "waiting for the lease"

    async def main() -> None:
        async with backend, anyio.create_task_group() as tg:
            # Handlers first: a signal that arrives while starting still stops cleanly.
            await tg.start(_stop_on_signal, tg.cancel_scope)
            if dashboard:
                from ..dashboard import serve_dashboard  # noqa: PLC0415 - the server extra

                async def page() -> None:
                    await serve_dashboard(
                        db,
                        host=dashboard_host,
                        port=dashboard_port,
                        status=live_status,
                        on_ready=lambda url: _say(f"dashboard: {url}"),
                    )
                    tg.cancel_scope.cancel()  # a signal stopped the page: stop it all

                tg.start_soon(page)
            await runner.run()

    try:
        anyio.run(main)
    except (MigrationError, BaseExceptionGroup) as exc:
        found = _migration_error(exc)
        if found is None:
            raise
        fail("worker", f"{found}; pass --migrations module:attr")
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


def run_worker_with_dashboard(
    db: Path, remote: str, token: str | None, *, host: str, port: int
) -> None:
    """``nexus-store dashboard --remote``: the worker with its dashboard, default options."""
    ctx = typer.Context(typer.main.get_command(worker_app))
    worker(ctx, db, remote, token, dashboard=True, dashboard_host=host, dashboard_port=port)
