"""The no-op adapter: for platforms without background execution, or sync turned off.

The factory picks it on ``emscripten``/``wasi`` (Pyodide, WASI runtimes) and whenever
``BackgroundSyncConfig(enabled=False)``. Nothing runs in the background:
:attr:`~BackgroundSyncService.is_supported` is False and scheduling answers
``UNSUPPORTED``, but :meth:`~BackgroundSyncService.sync_now` still runs the sync (the app
calls it when it wants, e.g. on a button or at start), with the same status, progress and
event streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio.lowlevel

from .._clock import Clock
from .._priority import SyncPriority
from .._remote import RemoteBackend
from ._config import BackgroundSyncConfig, ScheduleResult
from ._service import BackgroundSyncService
from ._task import TaskRun
from .device._device import DeviceStateProvider
from .engine._target import SyncTarget

__all__ = ["NoopSyncService"]


class NoopSyncService(BackgroundSyncService):
    """A background sync service that schedules nothing; manual runs still work.

    Args:
        targets: the store (or stores) to sync.
        backend: where :meth:`sync_now` sends ops (``None``: ``sync_now`` raises).
        config: the configuration (only its run options matter here).
        clock: the time source.
        device: the device state (``LOW`` ops wait on a metered network in manual runs too).
    """

    adapter_name = "noop"

    def __init__(
        self,
        targets: SyncTarget | Sequence[SyncTarget],
        backend: RemoteBackend | None = None,
        *,
        config: BackgroundSyncConfig | None = None,
        clock: Clock | None = None,
        device: DeviceStateProvider | None = None,
        lease_for: float = 120.0,
    ) -> None:
        super().__init__(
            targets,
            backend,
            config=config,
            clock=clock,
            device=device,
            watch_commits=False,
            lease_for=lease_for,
        )

    @property
    def is_supported(self) -> bool:
        """False: there is no background execution here."""
        return False

    async def _start(self, stack: AsyncExitStack) -> None:
        await anyio.lowlevel.checkpoint()

    async def _schedule(self) -> ScheduleResult:
        await anyio.lowlevel.checkpoint()
        return ScheduleResult.UNSUPPORTED

    async def _request_run(self, priority: SyncPriority) -> ScheduleResult:
        await anyio.lowlevel.checkpoint()
        return ScheduleResult.UNSUPPORTED

    async def _cancel(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def _has_schedule(self) -> bool:
        await anyio.lowlevel.checkpoint()
        return False

    async def _waits(self) -> list[str]:
        await anyio.lowlevel.checkpoint()
        reason = (
            "background sync is disabled (config.enabled is False)"
            if not self.config.enabled
            else "background execution is not supported on this platform"
        )
        return [f"{reason}: the no-op adapter schedules nothing; call sync_now()"]

    async def _history(self, task_id: str | None, limit: int) -> list[TaskRun]:
        await anyio.lowlevel.checkpoint()
        return []
