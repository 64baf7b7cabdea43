"""Running a background sync service in a thread, for synchronous apps.

:class:`BackgroundSyncThread` starts an event loop in a background thread (an anyio
blocking portal), runs the service there, and offers the service's methods as plain
blocking calls. Status transitions, run events and progress reach the app through
callbacks::

    with BackgroundSyncThread(service, on_status=print) as sync:
        sync.schedule_sync()
        store.save(note, priority=SyncPriority.CRITICAL)   # from any thread
        ...

Callbacks are called in the service's thread, in order, one at a time; they must be
quick (hand work to the app's own thread or queue if it is slow) and may call back into
the bridge only from another thread. The store stays usable from any thread meanwhile.

With the asyncio backend the service runs on the event loop that ``store.sync()`` uses
(one daemon thread per process), so one backend serves both. A bridge that is never
stopped is stopped at interpreter exit (or when collected) with a ``ResourceWarning``;
it never keeps the program from exiting.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio.to_thread

from .. import _unclosed
from .._exceptions import LifecycleError
from .._loop import STOP_TIMEOUT, LoopThread, shared_loop
from .._priority import SyncPriority
from ._config import BackgroundSyncConfig, BackgroundSyncStatus, ScheduleResult, ServiceState
from ._service import BackgroundSyncService
from ._task import TaskRun
from .engine._progress import SyncEvent, SyncProgress, SyncSummary

__all__ = ["BackgroundSyncThread"]

R = TypeVar("R")


class BackgroundSyncThread:
    """A :class:`BackgroundSyncService` running in a background thread.

    Args:
        service: the service to run (not started yet).
        on_status: called with each status (the current one first, then every transition).
        on_event: called with each run's event (the sync's and app tasks').
        on_progress: called with the progress of sync runs.
        backend: the anyio backend of the thread's event loop (``"asyncio"`` or ``"trio"``).
    """

    def __init__(
        self,
        service: BackgroundSyncService,
        *,
        on_status: Callable[[BackgroundSyncStatus], None] | None = None,
        on_event: Callable[[SyncEvent], None] | None = None,
        on_progress: Callable[[SyncProgress], None] | None = None,
        backend: str = "asyncio",
    ) -> None:
        if not isinstance(service, BackgroundSyncService):
            raise TypeError("BackgroundSyncThread runs a BackgroundSyncService")
        self._service = service
        self._on_status = on_status
        self._on_event = on_event
        self._on_progress = on_progress
        self._backend = backend
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._loop: LoopThread | None = None
        self._stopped = False
        self._tracked: _unclosed.Tracked | None = None

    @property
    def service(self) -> BackgroundSyncService:
        """The service (call its methods through this bridge, not directly)."""
        return self._service

    @property
    def running(self) -> bool:
        """Whether the thread and the service are running."""
        return self._loop is not None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the thread and the service; returns when the service is running.

        Raises:
            LifecycleError: already started (a bridge starts once).
        """
        with self._lock:
            if self._stack is not None or self._stopped:
                raise LifecycleError("a BackgroundSyncThread starts once")
            loop = (
                shared_loop()
                if self._backend == "asyncio"
                else LoopThread(f"nexus-store sync ({self._backend})", self._backend)
            )
            stack = contextlib.ExitStack()
            try:
                if loop is not shared_loop():
                    loop.start()
                    stack.callback(loop.stop)
                self._add_callbacks(stack)
                _, leave = loop.hold(self._service)
                stack.callback(leave, STOP_TIMEOUT)
            except BaseException:
                stack.close()
                self._stopped = True
                raise
            self._stack, self._loop = stack, loop
            self._tracked = _unclosed.track(
                self, functools.partial(stack.close), f"BackgroundSyncThread({self._service!r})"
            )
        return self

    def _add_callbacks(self, stack: contextlib.ExitStack) -> None:
        service = self._service
        if self._on_status is not None:
            on_status = self._on_status
            on_status(service.status)
            stack.callback(service.statuses.add_callback(on_status))
        if self._on_event is not None:
            stack.callback(service.events.add_callback(self._on_event))
        if self._on_progress is not None:
            stack.callback(service.progress.add_callback(self._on_progress))

    def stop(self) -> None:
        """Stop the service (a run in progress gives its ops back) and the thread.

        Idempotent.
        """
        with self._lock:
            stack, self._stack, self._loop = self._stack, None, None
            self._stopped = True
            tracked, self._tracked = self._tracked, None
        if stack is not None and tracked is not None and tracked.untrack():
            stack.close()

    def close(self) -> None:
        """Same as :meth:`stop` (every resource of the package closes with ``close()``)."""
        self.stop()

    async def aclose(self) -> None:
        """:meth:`stop` from async code (waits in a worker thread, not on the caller's loop)."""
        await anyio.to_thread.run_sync(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the service, blocking ----------------------------------------------------------------

    def _call(self, func: Callable[..., Coroutine[Any, Any, R]], *args: Any) -> R:
        loop = self._loop
        if loop is None:
            raise LifecycleError(
                "the background sync thread is not running: use start() or `with`"
                if not self._stopped
                else "the background sync thread is stopped"
            )
        return loop.call(func, *args)

    @property
    def status(self) -> BackgroundSyncStatus:
        """The service's current status."""
        return self._service.status

    @property
    def state(self) -> ServiceState:
        """The service's lifecycle state."""
        return self._service.state

    @property
    def is_supported(self) -> bool:
        """Whether the platform runs background work."""
        return self._service.is_supported

    def initialize(self, config: BackgroundSyncConfig) -> None:
        """See :meth:`BackgroundSyncService.initialize`."""
        self._call(self._service.initialize, config)

    def schedule_sync(self) -> ScheduleResult:
        """See :meth:`BackgroundSyncService.schedule_sync`."""
        return self._call(self._service.schedule_sync)

    def request_sync(
        self, priority: SyncPriority | int | str = SyncPriority.NORMAL
    ) -> ScheduleResult:
        """See :meth:`BackgroundSyncService.request_sync`."""
        return self._call(self._service.request_sync, priority)

    def cancel_sync(self) -> None:
        """See :meth:`BackgroundSyncService.cancel_sync`."""
        self._call(self._service.cancel_sync)

    def sync_now(self) -> SyncSummary:
        """Run the sync once and wait for it; see :meth:`BackgroundSyncService.sync_now`."""
        return self._call(self._service.sync_now)

    def why_not_running(self) -> str:
        """See :meth:`BackgroundSyncService.why_not_running`."""
        return self._call(self._service.why_not_running)

    def run_history(self, task_id: str | None = None, *, limit: int = 100) -> list[TaskRun]:
        """See :meth:`BackgroundSyncService.run_history`."""

        async def history() -> list[TaskRun]:
            return await self._service.run_history(task_id, limit=limit)

        return self._call(history)

    def settle(self) -> None:
        """See :meth:`BackgroundSyncService.settle`."""
        self._call(self._service.settle)

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._stopped else "unstarted")
        return f"BackgroundSyncThread({self._service!r}, {state})"
