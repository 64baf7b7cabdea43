"""``nexus-store upload``: send files to the sync server through a store file's queue.

Files named on the command line are queued (taken in by hard link or copy, so they may be
deleted at once), then sent in sync runs with rich progress bars, resumably (tus). With
``--watch DIR`` the folder is watched (:class:`~nexus_store.files.FolderWatch`): new and
changed files are queued as they appear and sent; a restarted watch does not queue again
what it queued before, and an upload cut by a kill goes on from where the server is.
``--once`` scans the folder once, sends what is queued and exits (for cron jobs and tests).

The store file may be an app's (its collections' records held for the uploaded files are
pushed too) or a file of its own, made on first use. Pulling is left to ``nexus-store sync``.

Exit codes: 0 every queued upload is done; 1 some failed or wait (dead-lettered, waiting
for a retry or the remote paused); 2 bad input; 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer
from rich.console import Console

from .._database import Database
from .._exceptions import NexusStoreError
from .._priority import SyncPriority
from ..queue import PrioritySyncQueue
from ._app import app
from ._errors import BAD_INPUT, fail
from ._options import DbOption, RemoteOption, TokenOption
from ._transfer_bars import TransferBars

if TYPE_CHECKING:
    from ..backends import Change
    from ..files._uploads import LocalFiles
    from ..sync.engine._progress import SyncSummary

_FILES_ONLY = "nx_upload_only"
_MAX_RUNS = 1000
"""Runs of one ``--once`` or plain invocation (each ends when nothing more can go now)."""


class _BadInputError(Exception):
    """Input the command cannot work with (exit code 2)."""


@app.command("upload")
def upload(  # noqa: PLR0917 - typer reads each option from a parameter
    db: DbOption,
    remote: RemoteOption,
    files: Annotated[list[Path] | None, typer.Argument(help="Files to upload.")] = None,
    token: TokenOption = None,
    watch: Annotated[
        Path | None,
        typer.Option(help="Watch this folder: upload new and changed files as they appear."),
    ] = None,
    once: Annotated[
        bool, typer.Option(help="With --watch: scan once, send what is queued, exit.")
    ] = False,
    tag: Annotated[str | None, typer.Option(help="Tag the uploads (see `queue`).")] = None,
    priority: Annotated[
        str, typer.Option(help="critical, high, normal or low.")
    ] = SyncPriority.NORMAL.name.lower(),
    delete_after: Annotated[
        bool,
        typer.Option(help="With --watch: delete each file once the server has it (unchanged)."),
    ] = False,
    rescan: Annotated[
        float, typer.Option(min=0.05, help="With --watch: seconds between scans at most.")
    ] = 2.0,
    settle: Annotated[
        float,
        typer.Option(
            min=0.0, help="With --watch: seconds a file must stay unchanged before it is sent."
        ),
    ] = 1.0,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds per request.")] = 60.0,
) -> None:
    """Upload files (or a watched folder) to the sync server, resumably, with progress."""
    console = Console()
    try:
        chosen = SyncPriority.coerce(priority)
    except (ValueError, TypeError) as exc:
        fail("upload", f"bad --priority {priority!r}: {exc}")
    if not files and watch is None:
        fail("upload", "nothing to upload: name files or give --watch DIR")
    for item in files or []:
        if not item.is_file():
            fail("upload", f"no such file: {item}")
    if watch is not None and not watch.is_dir():
        fail("upload", f"--watch: no such folder: {watch}")
    if db.exists() and not db.is_file():
        fail("upload", f"--db: not a file: {db}")
    try:
        code = anyio.run(
            _main, console, db, remote, token, files or [], watch, once, tag, chosen,
            delete_after, rescan, settle, timeout,
        )  # fmt: skip
    except KeyboardInterrupt:
        fail("upload", "interrupted; queued uploads go on from where they are next time", 130)
    except _BadInputError as exc:
        fail("upload", str(exc))
    except BAD_INPUT as exc:
        fail("upload", str(exc))
    except NexusStoreError as exc:
        fail("upload", f"{type(exc).__name__}: {exc}", 1)
    raise typer.Exit(code)


async def _main(  # noqa: PLR0917 - forwarded command-line options
    console: Console,
    path: Path,
    remote: str,
    token: str | None,
    paths: list[Path],
    watch: Path | None,
    once: bool,
    tag: str | None,
    priority: SyncPriority,
    delete_after: bool,
    rescan: float,
    settle: float,
    request_timeout: float,
) -> int:
    # Imported here so `nexus-store --help` stays quick.
    from ..backends._http import HttpBackend  # noqa: PLC0415
    from ..files._uploads import LocalFiles  # noqa: PLC0415
    from ..files._watch import FolderWatch  # noqa: PLC0415

    try:
        backend = HttpBackend(remote, token=token, timeout=request_timeout)
    except ValueError as exc:
        raise _BadInputError(str(exc)) from exc
    database = Database(path)
    try:
        queue = PrioritySyncQueue(database)
        local = LocalFiles(database, queue)
        for item in paths:
            local.upload(item, priority=priority, tag=tag, name=item.name)
        folder = (
            FolderWatch(
                local, watch, tag=tag, priority=priority, delete_after=delete_after, settle=settle
            )
            if watch is not None
            else None
        )
        async with backend:
            with TransferBars(console) as bars:
                if folder is None or once:
                    if folder is not None:
                        report = await anyio.to_thread.run_sync(folder.scan)
                        bars.scanned(report.queued)
                    summary = await _drain(database, queue, local, backend, bars)
                else:
                    summary = await _watch(database, queue, local, folder, backend, bars, rescan)
        left = [u for u in local.uploads(tag, done=False) if u.state.value in ("queued", "dead")]
    finally:
        database.close()
    _report(console, summary, left, bars.uploaded, bars.sent)
    return 0 if not left else 1


async def _drain(
    database: Database,
    queue: PrioritySyncQueue,
    local: LocalFiles,
    backend: Any,
    bars: TransferBars,
) -> SyncSummary | None:
    """Sync runs until a run sends nothing more (what is left waits for a retry or a
    constraint)."""
    summary = None
    for _ in range(_MAX_RUNS):
        summary = await _one_run(database, queue, backend, bars)
        bars.uploaded += summary.uploaded
        bars.sent += summary.transferred_bytes
        if summary.uploaded == 0 or not summary.ok:
            break
    return summary


async def _watch(  # noqa: PLR0917 - the command's parts
    database: Database,
    queue: PrioritySyncQueue,
    local: LocalFiles,
    folder: Any,
    backend: Any,
    bars: TransferBars,
    rescan: float,
) -> SyncSummary | None:
    """Scan and send until interrupted."""
    wake = anyio.Event()
    summary: SyncSummary | None = None

    def scanned(report: Any) -> None:
        nonlocal wake
        bars.scanned(report.queued)
        if report.queued:
            wake.set()

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: folder.run(on_scan=scanned, rescan=rescan))
        for _ in range(10**9):  # until interrupted
            summary = await _drain(database, queue, local, backend, bars)
            with anyio.move_on_after(rescan):
                await wake.wait()
            wake = anyio.Event()
        group.cancel_scope.cancel()  # pragma: no cover - the loop ends by interruption
    return summary


def _targets(database: Database, queue: PrioritySyncQueue) -> list[Any]:
    from ..sync.engine._rawtable import RawCollection, discover_collections  # noqa: PLC0415

    found = discover_collections(database)
    if found:  # records held for these files go out with them
        return [RawCollection(database, name, queue=queue) for name in found]
    return [_FilesOnly(database, queue)]


async def _one_run(
    database: Database, queue: PrioritySyncQueue, backend: Any, bars: TransferBars
) -> SyncSummary:
    from ..sync.engine._runner import SyncRunner  # noqa: PLC0415

    runner = SyncRunner(_targets(database, queue), backend, pull=False)
    runner.progress.add_callback(bars.show)
    return await runner.run()


class _FilesOnly:
    """A sync target with no records, for a store file that only holds uploads (the run's
    transfer step does the work; its push finds nothing under this name)."""

    def __init__(self, database: Database, queue: PrioritySyncQueue) -> None:
        self._database = database
        self._queue = queue

    @property
    def collection(self) -> str:
        return _FILES_ONLY

    @property
    def queue(self) -> PrioritySyncQueue:
        return self._queue

    @property
    def database(self) -> Database:
        return self._database

    def apply_ack(self, item_id: str | int, version: int) -> bool:
        return False

    def apply_acks(self, acks: Iterable[tuple[str | int, int]]) -> int:
        return 0

    def apply_remote_changes(
        self,
        changes: Iterable[Change],
        *,
        overwrite_pending: bool = False,
    ) -> list[Change]:
        return []

    def pull_cursor(self) -> int:
        return 0

    def set_pull_cursor(self, cursor: int) -> None:
        pass


def _report(
    console: Console, summary: SyncSummary | None, left: list[Any], uploaded: int, sent: int
) -> None:
    console.print(f"uploaded {uploaded} files ({sent} bytes sent)")
    if summary is not None and summary.error:
        console.print(f"last error: {summary.error}")
    if left:
        for upload in left[:20]:
            reason = f": {upload.error}" if upload.error else ""
            console.print(f"not done: {upload.name} ({upload.state.value}){reason}")
    else:
        console.print("every upload is done")
