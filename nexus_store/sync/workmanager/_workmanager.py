"""The WorkManager-like scheduler runtime: persisted work, run by registered tasks.

``WorkManager`` executes the decisions of :mod:`._decisions` against the ``nx_work*`` tables of
:mod:`._persistence`::

    async with WorkManager(database, clock=clock, device=device) as wm:
        wm.register(CleanupTask())                      # keyed by task.task_id
        request = PeriodicWorkRequestBuilder("cleanup", timedelta(hours=1)).build()
        await wm.enqueue_unique("cleanup", ExistingPeriodicWorkPolicy.KEEP, request)
        async for info in wm.subscribe(request.id):     # WorkInfo snapshots (WM-19)
            ...

How it runs: one dispatcher task sleeps on the injected :class:`~nexus_store.Clock` until
the earliest next run time or a wake-up (enqueue, cancel, a worker finishing, a device
change, a registration); it never polls busily, so an idle manager costs nothing but a
wake-up every ``SchedulingPolicy.max_idle_sleep``. Each pass reads the ENQUEUED work, asks
:func:`._decisions.plan_dispatch` what may start, and starts it: ENQUEUED -> RUNNING with the
attempt count incremented in one statement (WM-5). Each run is a task in the manager's
task group with a watchdog on the clock for the execution time limit (WM-12). Devices
with change notifications (``subscribe``) stop a run the moment one of its constraints
fails (WM-11); for other providers the dispatcher re-reads the state every
``device_poll_interval`` while some work runs or waits under constraints, and
:meth:`WorkManager.notify_device_changed` forces a look.

Workers are registered by name because specs outlive the process: after a restart the
app registers its tasks again and the schedule resumes; RUNNING rows found at start-up
were interrupted and run again (WM-22). Work whose worker is not registered waits.

One manager per database file at a time: the manager assumes it owns the ``nx_work``
tables while it runs. SQLite calls are short and run on the event loop thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Self, overload

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup

from ..._clock import Clock, SystemClock
from ..._database import Database
from ..._exceptions import LifecycleError, UnknownWorkError
from .._task import BackgroundSyncTask
from ..device._constraints import SystemDevice
from ..device._device import DeviceStateProvider
from ._decisions import assess
from ._enqueue import _Enqueueing
from ._persistence import WorkStore
from ._policy import SchedulingPolicy
from ._records import RunRecord, WorkInfo, WorkQuery
from ._running import DriverHooks, ManagerState, ReleaseControl, _Runner
from ._states import WorkState
from ._watches import WorkWatch, _IdWatch, _QueryWatch

logger = logging.getLogger("nexus_store.sync.workmanager")

__all__ = ["WorkManager"]


class WorkManager(_Enqueueing):
    """A persisted, constraint-aware scheduler of :class:`~nexus_store.sync.BackgroundSyncTask`.

    Args:
        database: the store's database; work lives in its ``nx_work*`` tables.
        clock: the time source (``FakeClock`` in tests); default the system clock.
        device: the device state provider for constraints; default the real machine
            (:class:`~nexus_store.sync.device.SystemDevice`).
        policy: floors, dispatch order, slots, limits and quota; default androidx's.
        driver: a test driver (``nexus_store.testing.WorkDriver``) that overrides release.
    """

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock | None = None,
        device: DeviceStateProvider | None = None,
        policy: SchedulingPolicy | None = None,
        driver: ReleaseControl | None = None,
    ) -> None:
        if device is None:
            device = SystemDevice()
        self._database = database
        self._clock: Clock = clock or SystemClock()
        self._device = device
        self.policy = policy or SchedulingPolicy()
        self._driver = driver
        self._state = ManagerState.UNSTARTED
        self._store: WorkStore | None = None
        self._workers: dict[str, BackgroundSyncTask] = {}
        self._runners: dict[str, _Runner] = {}
        self._watches: list[WorkWatch[Any]] = []
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        # Events are made in __aenter__: anyio needs a running event loop for them.
        self._wake: anyio.Event
        self._pass_done: anyio.Event
        self._passes = 0
        self._settled_passes = 0
        self._closing = False
        self._unsubscribe: Callable[[], None] | None = None
        self._loop_thread: int | None = None
        self._token: Any = None
        if driver is not None:
            driver.bind(
                DriverHooks(lookup=self._lookup, wake=self._wake_dispatcher, settle=self.settle)
            )

    @property
    def state(self) -> ManagerState:
        """Unstarted, running or closed."""
        return self._state

    @property
    def clock(self) -> Clock:
        """The clock this manager reads."""
        return self._clock

    async def __aenter__(self) -> Self:
        if self._state is not ManagerState.UNSTARTED:
            raise LifecycleError(f"a WorkManager can be started once (it is {self._state.value})")
        self._database.check_open()
        self._store = WorkStore(self._database)
        if self.policy.lowers_periodic_floor:
            logger.info(
                "periodic floor lowered to %ss by the scheduling policy (androidx: 900s)",
                self.policy.min_periodic_interval.total_seconds(),
            )
        recovered = self._store.recover(now=self._clock.now())
        for spec in recovered:
            logger.warning(
                "work %s (%s) was running when the process ended; it will run again",
                spec.id,
                spec.request.worker_name,
            )
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        self._wake = anyio.Event()
        self._pass_done = anyio.Event()
        stack = AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        self._state = ManagerState.RUNNING
        try:
            await self._tg.start(self._dispatch_loop)
            subscribe = getattr(self._device, "subscribe", None)
            if callable(subscribe):
                self._unsubscribe = subscribe(self._on_device_change)
        except BaseException:
            self._closing = True
            self._tg.cancel_scope.cancel()
            await stack.aclose()
            self._state = ManagerState.CLOSED
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._tg is None or self._stack is None:
            raise LifecycleError("the WorkManager was not started")
        self._tg.cancel_scope.cancel()
        try:
            return await self._stack.__aexit__(*exc_info)
        finally:
            self._state = ManagerState.CLOSED
            for watch in list(self._watches):
                watch._end()
            self._watches.clear()

    def register(self, task: BackgroundSyncTask) -> None:
        """Bind ``task`` to the work whose worker name is ``task.task_id``.

        Registering again under the same name replaces the task (for runs not yet started).

        Raises:
            LifecycleError: the manager is closed.
            TypeError: ``task`` is not a BackgroundSyncTask.
        """
        if self._state is ManagerState.CLOSED:
            raise LifecycleError("the WorkManager is closed")
        if not isinstance(task, BackgroundSyncTask):
            raise TypeError("register() takes a BackgroundSyncTask (task_id and execute())")
        self._workers[task.task_id] = task
        if self._state is ManagerState.RUNNING:
            self._call_in_loop(self._wake_dispatcher)

    @property
    def registered(self) -> frozenset[str]:
        """The registered worker names."""
        return frozenset(self._workers)

    async def get_work_info(self, work_id: str) -> WorkInfo | None:
        """The snapshot of one piece of work, or ``None`` if unknown (WM-19)."""
        store = self._check_running()
        spec = store.get(work_id)
        await anyio.lowlevel.checkpoint()
        return None if spec is None else WorkInfo.from_spec(spec)

    async def get_work_infos(self, query: WorkQuery | None = None) -> list[WorkInfo]:
        """Snapshots of the work ``query`` selects (AND of components, OR of values; WM-18)."""
        self._check_running()
        infos = self._infos(query or WorkQuery())
        await anyio.lowlevel.checkpoint()
        return infos

    async def get_tasks_by_tag(self, tag: str) -> list[WorkInfo]:
        """Snapshots of the work tagged ``tag`` (the worker name is an implicit tag)."""
        return await self.get_work_infos(WorkQuery(tags={tag}))

    async def get_work_infos_for_unique_work(self, name: str) -> list[WorkInfo]:
        """Snapshots of the work under unique name ``name``."""
        return await self.get_work_infos(WorkQuery(unique_names={name}))

    async def run_history(self, work_id: str | None = None, *, limit: int = 100) -> list[RunRecord]:
        """The persisted runs of one piece of work (or of all), newest first."""
        store = self._check_running()
        runs = store.runs(work_id, limit=limit)
        await anyio.lowlevel.checkpoint()
        return runs

    async def why_not_running(self, work_id: str) -> str:
        """Why the work is not running now ("" if it is running or about to start).

        Raises:
            UnknownWorkError: no work with that id.
        """
        store = self._check_running()
        spec = store.get(work_id)
        if spec is None:
            raise UnknownWorkError(f"no work with id {work_id!r}")
        await anyio.lowlevel.checkpoint()
        if spec.state is WorkState.RUNNING:
            return ""
        if spec.state is WorkState.BLOCKED:
            return "blocked: waiting for its prerequisite work to succeed"
        if spec.state is WorkState.ENQUEUED and spec.request.worker_name not in self._workers:
            return f"no worker registered under {spec.request.worker_name!r}"
        flags = self._driver.flags().get(work_id) if self._driver else None
        readiness = assess(
            spec,
            self._clock.now(),
            self._read_device(),
            flags=flags,
            manual_time=bool(self._driver and self._driver.manual_time),
        )
        if readiness.ready:
            return (
                ""
                if len(self._runners) < self.policy.max_concurrent_workers
                else "all worker slots are busy"
            )
        return readiness.waiting_for

    @overload
    def subscribe(self, target: str) -> WorkWatch[WorkInfo]: ...

    @overload
    def subscribe(self, target: WorkQuery) -> WorkWatch[list[WorkInfo]]: ...

    def subscribe(self, target: str | WorkQuery) -> WorkWatch[WorkInfo] | WorkWatch[list[WorkInfo]]:
        """Follow one work id, or the work a query selects (WM-19).

        Raises:
            UnknownWorkError: ``target`` is an id no work has.
        """
        store = self._check_running()
        if isinstance(target, WorkQuery):
            query_watch = _QueryWatch(target, self._infos(target), self._remove_watch)
            self._watches.append(query_watch)
            return query_watch
        spec = store.get(target)
        if spec is None:
            raise UnknownWorkError(f"no work with id {target!r}")
        id_watch = _IdWatch(target, WorkInfo.from_spec(spec), self._remove_watch)
        self._watches.append(id_watch)
        return id_watch

    def _remove_watch(self, watch: WorkWatch[Any]) -> None:
        if watch in self._watches:
            self._watches.remove(watch)

    def _lookup(self, work_id: str) -> WorkInfo | None:
        spec = self._require_store().get(work_id) if self._store is not None else None
        return None if spec is None else WorkInfo.from_spec(spec)

    async def prune(self, older_than: float) -> int:
        """Delete finished work unchanged for ``older_than`` seconds, and its run history."""
        store = self._check_running()
        count = store.prune(finished_before=self._clock.now() - older_than)
        await anyio.lowlevel.checkpoint()
        return count

    def notify_device_changed(self) -> None:
        """Tell the manager the device state changed (for providers without notifications).

        Safe to call from any thread.
        """
        if self._state is ManagerState.RUNNING:
            self._call_in_loop(self._wake_dispatcher)

    async def settle(self) -> None:
        """Wait until the dispatcher has made one full pass after this call.

        After it returns, every piece of work that was eligible at the current clock time
        has been started (or is waiting for a free slot). For tests and tools.
        """
        self._check_running()
        target = self._passes + 1
        self._wake_dispatcher()
        while self._settled_passes < target:
            await self._pass_done.wait()

    def __repr__(self) -> str:
        return f"WorkManager({self._database.path!r}, state={self._state.value})"
