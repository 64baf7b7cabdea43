"""The WorkManager's dispatcher: when work starts, how it runs, what happens when it ends.

One dispatcher task sleeps on the injected clock until the earliest next run time or a
wake-up; each pass reads the ENQUEUED work, asks :func:`._decisions.plan_dispatch` what may
start, and starts it (ENQUEUED -> RUNNING with the attempt count incremented, WM-5). Each
run is a task in the manager's task group with a watchdog for the execution time limit
(WM-12); a run that ends settles its spec (WM-9, WM-11) and resolves its dependents.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from ..._clock import Clock
from ..._database import Database
from ..._exceptions import (
    CodecError,
    InvalidWorkRequestError,
    LifecycleError,
    NexusStoreError,
    WorkDataTooLargeError,
)
from .._task import BackgroundSyncTask, TaskOutcome, TaskResult
from ..device._device import DeviceState, DeviceStateProvider
from ._decisions import WorkSpec, end_of_run, plan_dispatch
from ._persistence import WorkStore
from ._policy import SchedulingPolicy
from ._records import WorkInfo, WorkQuery
from ._requests import check_data_size
from ._running import ManagerState, ReleaseControl, _as_result, _RunContext, _Runner
from ._states import StopReason, WorkState
from ._watches import WorkWatch

__all__: list[str] = []

logger = logging.getLogger("nexus_store.sync.workmanager")


class _ManagerBase:
    """The state the WorkManager's parts share (set by ``WorkManager.__init__``)."""

    _database: Database
    _clock: Clock
    _device: DeviceStateProvider
    policy: SchedulingPolicy
    _driver: ReleaseControl | None
    _state: ManagerState
    _store: WorkStore | None
    _workers: dict[str, BackgroundSyncTask]
    _runners: dict[str, _Runner]
    _watches: list[WorkWatch[Any]]
    _stack: AsyncExitStack | None
    _tg: TaskGroup | None
    _wake: anyio.Event
    _pass_done: anyio.Event
    _passes: int
    _settled_passes: int
    _closing: bool
    _unsubscribe: Callable[[], None] | None
    _loop_thread: int | None
    _token: Any

    def _check_running(self) -> WorkStore:
        if self._state is ManagerState.UNSTARTED:
            raise LifecycleError(
                "the WorkManager is not started: use `async with WorkManager(...)`"
            )
        if self._state is ManagerState.CLOSED or self._closing or self._store is None:
            raise LifecycleError("the WorkManager is closed")
        return self._store


class _Dispatching(_ManagerBase):
    """The dispatcher loop, runs, their ends, and the notifications they send."""

    # -- dispatching -----------------------------------------------------------------------

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
        # Not waited onto the disk: a power cut that rolls the start back leaves the work
        # ENQUEUED with its earlier attempt count, which is how an interrupted run looks
        # anyway (it runs again); a crash of this process loses nothing (WAL).
        with store.transaction(durable=False):
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
        logger.debug(  # a service reports its runs as they end (one line, not two)
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
        message = None
        if result is not None and stop is None:
            message = result.message or None  # a success's message is kept too
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
                message=message,
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

    def _after_write(self, changed: list[WorkSpec]) -> None:
        for spec in changed:
            runner = self._runners.get(spec.id)
            if runner is not None and spec.state is WorkState.CANCELLED:
                runner.stop(StopReason.CANCELLED_BY_APP)
        self._publish(changed)
        self._wake_dispatcher()

    def _dispatch_now(self) -> None:
        """A pass right away (for the sync service, after asking for an expedited run):
        work that may start, starts now, not at the dispatcher loop's next turn, a few
        tasks' turns later. The loop still makes its pass (it sets the next wake-up) and
        finds that work running. Not under a test driver, which decides when work starts."""
        if self._closing or self._tg is None or self._driver is not None:
            return
        try:
            self._dispatch_pass()
        except NexusStoreError:
            logger.exception("a dispatcher pass failed; the dispatcher loop tries again")

    def _publish(self, changed: Sequence[WorkSpec]) -> None:
        if not changed or not self._watches:
            return
        infos = {spec.id: WorkInfo.from_spec(spec) for spec in changed}
        listed: dict[WorkQuery, list[WorkInfo]] = {}

        def listing(query: WorkQuery) -> list[WorkInfo]:
            # Watches of one query (the service's and the worker's) share one read.
            if query not in listed:
                listed[query] = self._infos(query)
            return list(listed[query])

        for watch in list(self._watches):
            watch._offer(infos, listing)

    def _infos(self, query: WorkQuery) -> list[WorkInfo]:
        return [WorkInfo.from_spec(spec) for spec in self._require_store().find(query)]

    def _require_store(self) -> WorkStore:
        if self._store is None:
            raise LifecycleError("the WorkManager is not started")
        return self._store
