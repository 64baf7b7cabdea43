"""Rich progress bars for file transfers (bytes, rate, time left), fed by a sync run's
progress stream; used by ``nexus-store upload`` and ``nexus-store sync``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from ..sync.engine._progress import SyncProgress

__all__ = ["TransferBars"]


class TransferBars:
    """A rich progress bar per transfer (bytes, rate, time left)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description:<30.30}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            disable=not console.is_terminal,
        )
        self._tasks: dict[str, TaskID] = {}
        self.uploaded = 0
        self.sent = 0

    def __enter__(self) -> TransferBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def scanned(self, queued: list[Any]) -> None:
        for upload in queued:
            self.progress.console.log(f"queued {upload.name} ({upload.size} bytes)")

    def show(self, progress: SyncProgress) -> None:
        for transfer in progress.transfers:
            task = self._tasks.get(transfer.op_id)
            if task is None:
                label = transfer.name or transfer.sha256[:12]
                task = self.progress.add_task(label, total=transfer.total, note="")
                self._tasks[transfer.op_id] = task
            note = "" if transfer.state.value == "running" else transfer.state.value
            if transfer.note and transfer.state.value != "done":
                note = f"{note}: {transfer.note}"[:60]
            self.progress.update(task, completed=transfer.done, total=transfer.total, note=note)
