"""The WorkManager-like scheduler runtime: persisted work, run by registered tasks.

``WorkManager`` executes the decisions of :mod:`._work` against the ``nx_work*`` tables of
:mod:`._workstore`::

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
:func:`._work.plan_dispatch` what may start, and starts it: ENQUEUED -> RUNNING with the
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

import dataclasses
import logging
import threading
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from enum import StrEnum
from typing import Any, Protocol, Self, TypeVar, overload, runtime_checkable

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from ..._broadcast import BufferedStream
from ..._clock import Clock, SystemClock
from ..._database import Database
from ..._exceptions import (
    CodecError,
    InvalidWorkRequestError,
    LifecycleError,
    NexusStoreError,
    UnknownWorkError,
    WorkDataTooLargeError,
)
from .._task import BackgroundSyncTask, TaskOutcome, TaskResult
from ..device._constraints import SystemDevice
from ..device._device import DeviceState, DeviceStateProvider
from ._decisions import (
    ReleaseFlags,
    WorkSpec,
    after_cancel,
    assess,
    end_of_run,
    initial_state,
    is_unfinished,
    plan_dispatch,
)
from ._persistence import WorkStore
from ._policy import SchedulingPolicy, clamp_periodic
from ._records import RunRecord, WorkInfo, WorkQuery
from ._requests import WorkRequest, check_data_size
from ._states import (
    ExistingPeriodicWorkPolicy,
    ExistingWorkPolicy,
    OutOfQuotaPolicy,
    StopReason,
    UpdateResult,
    WorkState,
)

__all__ = [
    "DriverHooks",
    "ManagerState",
    "ReleaseControl",
    "StoppableTask",
    "WorkManager",
    "WorkWatch",
]

logger = logging.getLogger("nexus_store.sync.workmanager")

T = TypeVar("T")


class ManagerState(StrEnum):
    """The lifecycle of a :class:`WorkManager`."""

    UNSTARTED = "unstarted"
    RUNNING = "running"
    CLOSED = "closed"


@runtime_checkable
class StoppableTask(Protocol):
    """A task that wants to hear when it is stopped (androidx ``onStopped``), optional."""

    def on_stopped(self) -> None:
        """Called once when the scheduler stops the run (before it is cancelled)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class DriverHooks:
    """What a :class:`ReleaseControl` (the test driver) may ask of the manager."""

    lookup: Callable[[str], WorkInfo | None]
    """The current snapshot of a work id, or ``None`` if unknown."""
    wake: Callable[[], None]
    """Make the dispatcher look again (after a flag changed)."""
    settle: Callable[[], Awaitable[None]]
    """Wait for one full dispatcher pass."""


class ReleaseControl(Protocol):
    """Overrides of when work is released, for tests (WM-23; see ``nexus_store.testing``)."""

    @property
    def manual_time(self) -> bool:
        """True: delays are released by the driver; False: by the clock (virtual-clock mode)."""
        ...

    def flags(self) -> Mapping[str, ReleaseFlags]:
        """The current overrides by work id."""
        ...

    def work_started(self, work_id: str) -> None:
        """A run started: its overrides are used up."""
        ...

    def bind(self, hooks: DriverHooks) -> None:
        """Called once by the manager that uses this control."""
        ...


class WorkWatch(BufferedStream[T]):
    """Snapshots of work as they change: an async iterator (WM-19).

    The first item is the state at subscription time; then one item per persisted change.
    Ends when the manager closes (after the buffered items) or on :meth:`close`.
    """

    def __init__(self, first: T, remove: Callable[[WorkWatch[Any]], None]) -> None:
        super().__init__([first])
        self._remove = remove

    def _detach(self) -> None:
        self._remove(self)

    def _offer(self, infos: Mapping[str, WorkInfo], manager: WorkManager) -> None:
        raise NotImplementedError


class _IdWatch(WorkWatch[WorkInfo]):
    def __init__(
        self, work_id: str, first: WorkInfo, remove: Callable[[WorkWatch[Any]], None]
    ) -> None:
        super().__init__(first, remove)
        self._work_id = work_id

    def _offer(self, infos: Mapping[str, WorkInfo], manager: WorkManager) -> None:
        info = infos.get(self._work_id)
        if info is not None:
            self._put(info)


class _QueryWatch(WorkWatch[list[WorkInfo]]):
    def __init__(
        self, query: WorkQuery, first: list[WorkInfo], remove: Callable[[WorkWatch[Any]], None]
    ) -> None:
        super().__init__(first, remove)
        self._query = query
        self._ids = {info.id for info in first}

    def _offer(self, infos: Mapping[str, WorkInfo], manager: WorkManager) -> None:
        if any(self._query.matches(info) or info.id in self._ids for info in infos.values()):
            current = manager._infos(self._query)
            self._ids = {info.id for info in current}
            self._put(current)


@dataclasses.dataclass(eq=False)
class _Runner:
    spec: WorkSpec
    task: BackgroundSyncTask
    run_id: int
    expedited_slot: bool
    started: float
    """``clock.monotonic()`` at the start (for the duration)."""
    started_at: float
    """``clock.now()`` at the start (for the time limit)."""
    constraints_overridden: bool
    scope: anyio.CancelScope = dataclasses.field(default_factory=anyio.CancelScope)
    stop_reason: StopReason | None = None
    finished: bool = False

    def stop(self, reason: StopReason) -> None:
        """Signal the worker (is_stopped, on_stopped) and cancel it; its result is ignored."""
        if self.finished or self.stop_reason is not None:
            return
        self.stop_reason = reason
        logger.info(
            "stopping work %s (%s): %s", self.spec.id, self.spec.request.worker_name, reason.name
        )
        if isinstance(self.task, StoppableTask):
            try:
                self.task.on_stopped()
            except Exception:
                logger.exception("on_stopped() of %s raised", self.spec.request.worker_name)
        self.scope.cancel()


class _RunContext:
    """The :class:`~nexus_store.sync.TaskContext` a worker receives."""

    def __init__(self, manager: WorkManager, runner: _Runner) -> None:
        self._manager = manager
        self._runner = runner
        spec = runner.spec
        self.work_id = spec.id
        """The id of the work being run."""
        self.tags = spec.request.tags
        """The work's tags."""
        self.generation = spec.generation
        """The spec generation this run started with (WM-17)."""
        # The stored count was incremented on start; the worker sees the value before (WM-5).
        self._attempt = spec.run_attempt_count - 1
        self._input = types.MappingProxyType(dict(spec.request.input))

    @property
    def run_attempt_count(self) -> int:
        """How many times this work ran before (0 on the first execution)."""
        return self._attempt

    @property
    def input(self) -> Mapping[str, Any]:
        """The work's input data (read-only)."""
        return self._input

    @property
    def is_stopped(self) -> bool:
        """True once the scheduler stopped this run (constraint lost, timeout, cancel)."""
        return self._runner.stop_reason is not None

    @property
    def stop_reason(self) -> StopReason:
        """Why the run was stopped (``NOT_STOPPED`` while it was not)."""
        return self._runner.stop_reason or StopReason.NOT_STOPPED

    async def set_progress(self, progress: Mapping[str, Any]) -> None:
        """Publish progress (visible in WorkInfo while RUNNING).

        Ignored once the run finished or was stopped (WM-20).

        Raises:
            WorkDataTooLargeError: above 10 KB encoded.
        """
        if self._runner.finished or self._runner.stop_reason is not None:
            return
        blob = check_data_size(progress, "progress")
        self._manager._store_progress(self._runner, blob)
        await anyio.lowlevel.checkpoint()


def _as_result(value: object) -> TaskResult:
    if isinstance(value, TaskResult):
        return value
    if isinstance(value, bool):
        return TaskResult.success() if value else TaskResult.failure()
    raise TypeError(f"execute() must return a bool or a TaskResult, not {type(value).__name__}")


class WorkManager:
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

    # -- lifecycle ------------------------------------------------------------------------

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

    def _check_running(self) -> WorkStore:
        if self._state is ManagerState.UNSTARTED:
            raise LifecycleError(
                "the WorkManager is not started: use `async with WorkManager(...)`"
            )
        if self._state is ManagerState.CLOSED or self._closing or self._store is None:
            raise LifecycleError("the WorkManager is closed")
        return self._store

    # -- workers --------------------------------------------------------------------------

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

    # -- enqueueing -----------------------------------------------------------------------

    async def enqueue(self, request: WorkRequest, *, depends_on: Sequence[str] = ()) -> str | None:
        """Enqueue work; with ``depends_on`` it runs after those ids succeed (WM-10).

        Returns:
            The work id, or ``None`` when expedited work was dropped by ``DROP`` (WM-14).

        Raises:
            InvalidWorkRequestError: the request was already enqueued, or periodic work in
                a chain.
            UnknownWorkError: a prerequisite id does not exist.
            LifecycleError: the manager is not running.
        """
        store = self._check_running()
        request = self._admit(request)
        now = self._clock.now()
        with store.transaction():
            spec = self._insert(request, now, prerequisites=list(depends_on), unique_name=None)
        if spec is None:
            return None
        self._after_write([spec])
        await anyio.lowlevel.checkpoint()
        return spec.id

    async def enqueue_unique(
        self,
        name: str,
        policy: ExistingWorkPolicy | ExistingPeriodicWorkPolicy,
        request: WorkRequest,
    ) -> str | None:
        """Enqueue work under a unique name, resolving a clash by ``policy`` (WM-16, WM-17).

        One-time work takes an :class:`ExistingWorkPolicy`, periodic work an
        :class:`ExistingPeriodicWorkPolicy`. Replaced or cancelled predecessors stay
        readable as CANCELLED but lose the name.

        Returns:
            The id of the work now carrying the request (the existing id for ``UPDATE``),
            or ``None`` when nothing was enqueued (``KEEP`` with unfinished work, ``DROP``).

        Raises:
            InvalidWorkRequestError: the policy does not fit the request, or ``UPDATE`` of a
                chain or of one-time work.
            LifecycleError: the manager is not running.
        """
        store = self._check_running()
        if not isinstance(name, str) or not name:
            raise InvalidWorkRequestError("a unique work name must be a non-empty string")
        if request.is_periodic and not isinstance(policy, ExistingPeriodicWorkPolicy):
            raise InvalidWorkRequestError("periodic work takes an ExistingPeriodicWorkPolicy")
        if not request.is_periodic and not isinstance(policy, ExistingWorkPolicy):
            raise InvalidWorkRequestError("one-time work takes an ExistingWorkPolicy")
        request = self._admit(request)
        now = self._clock.now()
        changed: list[WorkSpec] = []
        with store.transaction():
            existing = store.with_name(name)
            if isinstance(policy, ExistingPeriodicWorkPolicy):
                work_id = self._unique_periodic(
                    name, policy, request, existing=existing, now=now, changed=changed
                )
            else:
                work_id = self._unique_one_time(
                    name, policy, request, existing=existing, now=now, changed=changed
                )
        self._after_write(changed)
        await anyio.lowlevel.checkpoint()
        return work_id

    def _unique_one_time(
        self,
        name: str,
        policy: ExistingWorkPolicy,
        request: WorkRequest,
        *,
        existing: list[WorkSpec],
        now: float,
        changed: list[WorkSpec],
    ) -> str | None:
        prerequisites: list[str] = []
        if existing:
            if policy is ExistingWorkPolicy.KEEP:
                if any(is_unfinished(spec.state) for spec in existing):
                    return None
                self._detach(name, now, changed)
            elif policy is ExistingWorkPolicy.REPLACE:
                self._cancel_tree([spec.id for spec in existing], now, changed)
                self._detach(name, now, changed)
            else:
                store = self._require_store()
                leaves = [spec for spec in existing if not store.dependents(spec.id)]
                broken = any(
                    spec.state in (WorkState.FAILED, WorkState.CANCELLED) for spec in leaves
                )
                if policy is ExistingWorkPolicy.APPEND_OR_REPLACE and broken:
                    self._cancel_tree([spec.id for spec in existing], now, changed)
                    self._detach(name, now, changed)
                else:
                    prerequisites = [spec.id for spec in leaves]
        spec = self._insert(request, now, prerequisites=prerequisites, unique_name=name)
        if spec is None:
            return None
        changed.append(spec)
        return spec.id

    def _unique_periodic(
        self,
        name: str,
        policy: ExistingPeriodicWorkPolicy,
        request: WorkRequest,
        *,
        existing: list[WorkSpec],
        now: float,
        changed: list[WorkSpec],
    ) -> str | None:
        if existing:
            if policy is ExistingPeriodicWorkPolicy.KEEP:
                if any(is_unfinished(spec.state) for spec in existing):
                    return None
                self._detach(name, now, changed)
            elif policy is ExistingPeriodicWorkPolicy.CANCEL_AND_REENQUEUE:
                self._cancel_tree([spec.id for spec in existing], now, changed)
                self._detach(name, now, changed)
            else:
                if len(existing) > 1:
                    raise InvalidWorkRequestError(
                        "Can't apply UPDATE policy to the chains of work."
                    )
                current = existing[0]
                if not current.request.is_periodic:
                    raise InvalidWorkRequestError(
                        "Can't update one-time work to periodic work: an update must keep"
                        " the work's type"
                    )
                if not current.state.is_finished:
                    self._update_in_place(current, request, now, changed)
                    return current.id
                self._detach(name, now, changed)  # UPDATE replaces a CANCELLED predecessor
        spec = self._insert(request, now, prerequisites=[], unique_name=name)
        if spec is None:
            return None
        changed.append(spec)
        return spec.id

    async def update_work(self, request: WorkRequest) -> UpdateResult:
        """Change the spec of existing work ``request.id`` in place (androidx ``updateWork``).

        Keeps state, attempt and period counts and the last enqueue time, bumps the
        generation; a running instance finishes with the old spec (WM-17).

        Raises:
            UnknownWorkError: no work with that id.
            InvalidWorkRequestError: one-time and periodic cannot be swapped.
        """
        store = self._check_running()
        request = self._admit(request)
        now = self._clock.now()
        changed: list[WorkSpec] = []
        with store.transaction():
            current = store.get(request.id)
            if current is None:
                raise UnknownWorkError(f"no work with id {request.id!r}")
            result = self._update_in_place(current, request, now, changed)
        self._after_write(changed)
        await anyio.lowlevel.checkpoint()
        return result

    def _update_in_place(
        self, current: WorkSpec, request: WorkRequest, now: float, changed: list[WorkSpec]
    ) -> UpdateResult:
        if current.state.is_finished:
            return UpdateResult.NOT_APPLIED
        if current.request.is_periodic != request.is_periodic:
            raise InvalidWorkRequestError("an update must keep the work's type (one-time/periodic)")
        running = current.state is WorkState.RUNNING
        updated = dataclasses.replace(
            current,
            request=dataclasses.replace(request, id=current.id),
            generation=current.generation + 1,
            progress=current.progress if running else {},
        )
        self._require_store().save(updated, now=now)
        changed.append(updated)
        return UpdateResult.APPLIED_FOR_NEXT_RUN if running else UpdateResult.APPLIED_IMMEDIATELY

    def _admit(self, request: WorkRequest) -> WorkRequest:
        """Apply this manager's periodic floors (a request built under a lower floor)."""
        if not isinstance(request, WorkRequest):
            raise InvalidWorkRequestError("enqueue() takes a WorkRequest from a builder")
        if request.interval is None:
            return request
        interval, flex = clamp_periodic(
            request.interval,
            request.flex,
            min_interval=self.policy.min_periodic_interval.total_seconds(),
            min_flex=self.policy.min_periodic_flex.total_seconds(),
        )
        if (interval, flex) == (request.interval, request.flex):
            return request
        return dataclasses.replace(request, interval=interval, flex=flex)

    def _insert(
        self,
        request: WorkRequest,
        now: float,
        *,
        prerequisites: list[str],
        unique_name: str | None,
    ) -> WorkSpec | None:
        store = self._require_store()
        if store.get(request.id) is not None:
            raise InvalidWorkRequestError(f"work {request.id} was already enqueued")
        states: list[WorkState | None] = []
        for prerequisite_id in prerequisites:
            prerequisite = store.get(prerequisite_id)
            if prerequisite is None:
                raise UnknownWorkError(f"no work with id {prerequisite_id!r} to depend on")
            if request.is_periodic or prerequisite.request.is_periodic:
                raise InvalidWorkRequestError("periodic work cannot be part of a chain")
            states.append(prerequisite.state)
        if request.expedited:
            granted = self._apply_quota(request, now)
            if granted is None:
                return None
            request = granted
        spec = WorkSpec(
            request=request,
            state=initial_state(states),
            last_enqueue_time=now,
            unique_name=unique_name,
            enqueued_at=now,
        )
        spec = store.insert(spec, now=now)
        if prerequisites:
            store.add_dependencies(spec.id, prerequisites)
        return spec

    def _apply_quota(self, request: WorkRequest, now: float) -> WorkRequest | None:
        store = self._require_store()
        window = self.policy.expedited_quota_window.total_seconds()
        if store.expedited_grants_since(now - window) < self.policy.expedited_quota:
            store.grant_expedited(now=now, forget_before=now - window)
            return request
        if request.out_of_quota_policy is OutOfQuotaPolicy.DROP:
            logger.info("expedited quota used up: dropping work %s", request.id)
            return None
        logger.info("expedited quota used up: work %s runs as normal work", request.id)
        return dataclasses.replace(request, expedited=False)

    # -- cancelling -----------------------------------------------------------------------

    async def cancel_by_id(self, work_id: str) -> int:
        """Cancel work and its dependents (WM-10); returns how many became CANCELLED."""
        self._check_running()
        return await self._cancel([work_id])

    async def cancel_by_tag(self, tag: str) -> int:
        """Cancel all work with ``tag`` and its dependents (WM-18)."""
        store = self._check_running()
        return await self._cancel([spec.id for spec in store.find(WorkQuery(tags={tag}))])

    async def cancel_unique(self, name: str) -> int:
        """Cancel the work under unique name ``name`` and its dependents (WM-18)."""
        store = self._check_running()
        return await self._cancel([spec.id for spec in store.with_name(name)])

    async def cancel_all(self) -> int:
        """Cancel all unfinished work."""
        store = self._check_running()
        query = WorkQuery(states={WorkState.ENQUEUED, WorkState.RUNNING, WorkState.BLOCKED})
        return await self._cancel([spec.id for spec in store.find(query)])

    async def _cancel(self, ids: list[str]) -> int:
        store = self._check_running()
        now = self._clock.now()
        changed: list[WorkSpec] = []
        with store.transaction():
            self._cancel_tree(ids, now, changed)
        self._after_write(changed)
        await anyio.lowlevel.checkpoint()
        return len({spec.id for spec in changed})

    def _cancel_tree(self, ids: list[str], now: float, changed: list[WorkSpec]) -> None:
        store = self._require_store()
        stack, seen = list(ids), set[str]()
        while stack:
            work_id = stack.pop()
            if work_id in seen:
                continue
            seen.add(work_id)
            spec = store.get(work_id)
            if spec is None:
                continue
            if spec.state not in (WorkState.SUCCEEDED, WorkState.FAILED, WorkState.CANCELLED):
                cancelled = after_cancel(spec)
                store.save(cancelled, now=now)
                changed.append(cancelled)
            stack.extend(store.dependents(work_id))

    def _detach(self, name: str, now: float, changed: list[WorkSpec]) -> None:
        store = self._require_store()
        for spec in store.with_name(name):
            detached = dataclasses.replace(spec, unique_name=None)
            store.save(detached, now=now)
            changed.append(detached)

    # -- queries and subscriptions --------------------------------------------------------

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

    def _infos(self, query: WorkQuery) -> list[WorkInfo]:
        return [WorkInfo.from_spec(spec) for spec in self._require_store().find(query)]

    def _lookup(self, work_id: str) -> WorkInfo | None:
        spec = self._require_store().get(work_id) if self._store is not None else None
        return None if spec is None else WorkInfo.from_spec(spec)

    async def prune(self, older_than: float) -> int:
        """Delete finished work unchanged for ``older_than`` seconds, and its run history."""
        store = self._check_running()
        count = store.prune(finished_before=self._clock.now() - older_than)
        await anyio.lowlevel.checkpoint()
        return count

    # -- dispatching ----------------------------------------------------------------------

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

    def _wake_dispatcher(self) -> None:
        self._wake.set()

    def _call_in_loop(self, func: Callable[[], None]) -> None:
        if self._loop_thread is None or threading.get_ident() == self._loop_thread:
            func()
            return
        try:
            anyio.from_thread.run_sync(func, token=self._token)
        except Exception:  # the loop has ended: nothing left to wake
            logger.debug("could not reach the WorkManager's event loop", exc_info=True)

    def _on_device_change(self, state: DeviceState) -> None:
        if self._state is not ManagerState.RUNNING or self._closing:
            return
        self._call_in_loop(lambda: self._device_changed(state))

    def _device_changed(self, state: DeviceState) -> None:
        self._check_running_constraints(state)
        self._wake_dispatcher()

    def _read_device(self) -> DeviceState | None:
        try:
            return self._device.current()
        except Exception:
            logger.warning(
                "reading the device state failed; constraints count as unmet", exc_info=True
            )
            return None

    def _check_running_constraints(self, state: DeviceState | None) -> None:
        for runner in list(self._runners.values()):
            if runner.constraints_overridden:
                continue
            unmet = runner.spec.request.constraints.unmet(state)
            if unmet:
                runner.stop(unmet[0])

    async def _dispatch_loop(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            self._wake = anyio.Event()
            try:
                wake_at = self._dispatch_pass()
            except NexusStoreError:
                # A damaged row or a database hiccup must not end scheduling: look again later.
                logger.exception("a dispatcher pass failed; retrying")
                wake_at = self._clock.now() + self.policy.device_poll_interval.total_seconds()
            self._passes += 1  # counted here: a pass never spans an await
            await self._sleep_until(wake_at)

    def _pass_completed(self) -> None:
        # The loop is about to wait: everything the last pass started is in motion.
        self._settled_passes = self._passes
        done, self._pass_done = self._pass_done, anyio.Event()
        done.set()

    def _dispatch_pass(self) -> float | None:
        store = self._require_store()
        now = self._clock.now()
        # A wall clock stepped back must not hold schedules set before the step.
        store.clamp_future(now=now)
        device = self._read_device()
        manual = bool(self._driver and self._driver.manual_time)
        if not manual:
            self._check_running_constraints(device)
        running = sum(1 for runner in self._runners.values() if not runner.expedited_slot)
        plan = plan_dispatch(
            store.in_state(WorkState.ENQUEUED),
            now,
            device,
            registered=self._workers.keys(),
            running=running,
            running_expedited=len(self._runners) - running,
            policy=self.policy,
            flags=self._driver.flags() if self._driver else None,
            manual_time=manual,
        )
        for spec, expedited_slot in plan.start:
            self._start(spec, expedited_slot, now)
        wake_at = plan.wake_at
        watching = any(
            not runner.constraints_overridden and runner.spec.request.constraints.has_any
            for runner in self._runners.values()
        )
        if self._unsubscribe is None and not manual and (plan.waiting_on_device or watching):
            poll_at = now + self.policy.device_poll_interval.total_seconds()
            wake_at = poll_at if wake_at is None else min(wake_at, poll_at)
        return wake_at

    async def _sleep_until(self, wake_at: float | None) -> None:
        """Sleep until ``wake_at`` (capped) or a wake-up; count the pass done once asleep."""
        wake = self._wake
        deadline = self._clock.now() + self.policy.max_idle_sleep.total_seconds()
        if wake_at is not None:
            deadline = min(deadline, wake_at)
        if deadline <= self._clock.now() or wake.is_set():
            self._pass_completed()
            await anyio.lowlevel.checkpoint()
            return

        async def timer(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            # An absolute deadline, in case the clock moved since the pass.
            await self._clock.sleep(deadline - self._clock.now())
            wake.set()

        async with anyio.create_task_group() as tg:
            await tg.start(timer)  # the timer is waiting on the clock once this returns
            self._pass_completed()
            await wake.wait()
            tg.cancel_scope.cancel()

    def _start(self, spec: WorkSpec, expedited_slot: bool, now: float) -> None:
        store = self._require_store()
        task = self._workers.get(spec.request.worker_name)
        if task is None or self._tg is None:
            return
        with store.transaction():
            running = store.try_set_running(spec.id, now=now)
            if running is None:
                return
            run_id = store.start_run(running, started_at=now, expedited=spec.request.expedited)
        flags = self._driver.flags().get(spec.id) if self._driver else None
        manual = bool(self._driver and self._driver.manual_time)
        if self._driver is not None:
            self._driver.work_started(spec.id)
        runner = _Runner(
            spec=running,
            task=task,
            run_id=run_id,
            expedited_slot=expedited_slot,
            started=self._clock.monotonic(),
            started_at=now,
            constraints_overridden=manual or bool(flags and flags.constraints_met),
        )
        self._runners[spec.id] = runner
        logger.info(
            "starting work %s (%s), attempt %d",
            spec.id,
            spec.request.worker_name,
            running.run_attempt_count - 1,
        )
        self._publish([running])
        self._tg.start_soon(self._run, runner, name=f"work {spec.request.worker_name} {spec.id}")

    async def _run(self, runner: _Runner) -> None:
        request = runner.spec.request
        limit = request.execution_time_limit or self.policy.execution_time_limit.total_seconds()
        context = _RunContext(self, runner)
        result: TaskResult | None = None
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watchdog, runner, limit)
                with runner.scope:
                    try:
                        result = _as_result(await runner.task.execute(context))
                    except Exception as exc:  # a worker's exception is its failure (WM-10)
                        error = exc
                tg.cancel_scope.cancel()
        finally:
            runner.finished = True
            try:
                self._finish(runner, result, error)
            except NexusStoreError:
                logger.exception("could not record the end of work %s", runner.spec.id)
            self._wake_dispatcher()

    async def _watchdog(self, runner: _Runner, limit: float) -> None:
        # Measured from the start transition, not from when this task first runs.
        await self._clock.sleep(runner.started_at + limit - self._clock.now())
        runner.stop(StopReason.TIMEOUT)

    def _finish(self, runner: _Runner, result: TaskResult | None, error: Exception | None) -> None:
        self._runners.pop(runner.spec.id, None)
        store = self._require_store()
        now = self._clock.now()
        duration = max(0.0, self._clock.monotonic() - runner.started)
        stop = runner.stop_reason
        if stop is None and result is None and error is None:
            stop = StopReason.UNKNOWN  # cancelled from outside: the manager is closing
        error_text = None if error is None else f"{type(error).__name__}: {error}"
        if error is not None and stop is None:
            logger.warning(
                "work %s (%s) raised; counted as failure",
                runner.spec.id,
                runner.spec.request.worker_name,
                exc_info=error,
            )
        output: dict[str, Any] = {}
        if result is not None and stop is None:
            if result.message and result.outcome is not TaskOutcome.SUCCESS:
                error_text = result.message
            try:
                check_data_size(result.output, "output")
                output = dict(result.output)
            except (WorkDataTooLargeError, InvalidWorkRequestError, CodecError) as exc:
                error_text = f"{type(exc).__name__}: {exc}"
                result = TaskResult.failure()
        changed: list[WorkSpec] = []
        with store.transaction():
            updated, outcome, stop = end_of_run(
                store.get(runner.spec.id),
                now,
                stop=stop,
                outcome=None if result is None else result.outcome,
                output=output,
            )
            if updated is not None:
                store.save(updated, now=now)
                changed.append(updated)
                if updated.state is WorkState.SUCCEEDED:
                    self._resolve_dependents(updated.id, now, changed)
                elif updated.state is WorkState.FAILED:
                    self._fail_dependents(updated.id, now, changed)
            store.finish_run(
                runner.run_id,
                ended_at=now,
                duration=duration,
                outcome=outcome,
                stop_reason=stop,
                error=error_text,
            )
        self._publish(changed)

    def _resolve_dependents(self, work_id: str, now: float, changed: list[WorkSpec]) -> None:
        store = self._require_store()
        for dependent_id in store.dependents(work_id):
            dependent = store.get(dependent_id)
            if dependent is None or dependent.state is not WorkState.BLOCKED:
                continue
            states = []
            for prerequisite_id in store.prerequisites(dependent_id):
                prerequisite = store.get(prerequisite_id)
                states.append(None if prerequisite is None else prerequisite.state)
            if all(state in (None, WorkState.SUCCEEDED) for state in states):
                unblocked = dataclasses.replace(
                    dependent, state=WorkState.ENQUEUED, last_enqueue_time=now
                )
                store.save(unblocked, now=now)
                changed.append(unblocked)

    def _fail_dependents(self, work_id: str, now: float, changed: list[WorkSpec]) -> None:
        store = self._require_store()
        stack, seen = store.dependents(work_id), set[str]()
        while stack:
            dependent_id = stack.pop()
            if dependent_id in seen:
                continue
            seen.add(dependent_id)
            dependent = store.get(dependent_id)
            if dependent is None:
                continue
            if (
                dependent.state is not WorkState.CANCELLED
                and dependent.state is not WorkState.FAILED
            ):
                failed = dataclasses.replace(dependent, state=WorkState.FAILED)
                store.save(failed, now=now)
                changed.append(failed)
            stack.extend(store.dependents(dependent_id))

    def _store_progress(self, runner: _Runner, blob: bytes) -> None:
        store = self._require_store()
        if store.set_progress(runner.spec.id, blob, now=self._clock.now()):
            spec = store.get(runner.spec.id)
            if spec is not None:
                self._publish([spec])

    # -- publishing -----------------------------------------------------------------------

    def _after_write(self, changed: list[WorkSpec]) -> None:
        for spec in changed:
            runner = self._runners.get(spec.id)
            if runner is not None and spec.state is WorkState.CANCELLED:
                runner.stop(StopReason.CANCELLED_BY_APP)
        self._publish(changed)
        self._wake_dispatcher()

    def _publish(self, changed: Sequence[WorkSpec]) -> None:
        if not changed or not self._watches:
            return
        infos = {spec.id: WorkInfo.from_spec(spec) for spec in changed}
        for watch in list(self._watches):
            watch._offer(infos, self)

    def _require_store(self) -> WorkStore:
        if self._store is None:
            raise LifecycleError("the WorkManager is not started")
        return self._store

    def __repr__(self) -> str:
        return f"WorkManager({self._database.path!r}, state={self._state.value})"
