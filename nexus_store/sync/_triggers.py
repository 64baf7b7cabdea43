"""Running syncs, and deciding when to ask for them: the run lock, status, triggers, probes.

One sync run at a time (a lock), with the device probed first and ``status`` set around
it. A commit watcher wakes the trigger loop, which asks the queue when the next
``CRITICAL`` and ``HIGH`` ops become eligible and asks the adapter for a run
(:func:`._decisions.plan_requests`); a paused remote is asked nothing before its
deadline. A probe loop notices the backend becoming reachable again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .._clock import Clock
from .._exceptions import LifecycleError, NexusStoreError, StoreClosedError, SyncError
from .._priority import SyncPriority
from .._remote import RemoteBackend
from ..queue import PrioritySyncQueue
from ._changes import ChangeSource
from ._config import BackgroundSyncStatus, ScheduleResult, ServiceState
from ._decisions import _TRIGGERED, plan_requests, status_after
from ._quick_read import read_soon
from ._service_base import _ServiceBase
from ._store_task import SYNC_TASK_ID
from .device._device import DeviceState
from .engine._pause import RemotePause, RemotePauses, remote_identity
from .engine._progress import SyncStopReason, SyncSummary
from .engine._runner import SyncRunner

__all__: list[str] = []

logger = logging.getLogger("nexus_store.sync.service")

_PROBE_FRESH = 5.0
"""Seconds a reachability probe is trusted before a run probes again."""


async def _wait_until(event: anyio.Event, deadline: float | None, clock: Clock) -> bool:
    """Return when ``event`` is set or the wall-clock ``deadline`` comes (None: none).

    The wait is measured on the monotonic clock from now (``clock.sleep``), so a step of
    the wall clock meanwhile neither stretches nor cuts it.

    Returns:
        Whether the deadline came (rather than the event).
    """
    if deadline is None:
        await event.wait()
        return False
    fired = False
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def timer() -> None:
                nonlocal fired
                await clock.sleep(deadline - clock.now())
                fired = True
                scope.cancel()

            tg.start_soon(timer)
            await event.wait()
            scope.cancel()
    return fired


class _Triggering(_ServiceBase):
    """The service's runs, its status, its trigger loop and its reachability probe."""

    # -- running the sync ---------------------------------------------------------------------

    async def _run_sync(self, *, budget: float | None, trigger: str) -> SyncSummary:
        if self._backend is None:
            raise SyncError("no backend to sync with: pass backend= or give the store one")
        if self._run_lock is None:
            raise LifecycleError("the service is not started")
        self._active_runs += 1
        self._critical_asked = False  # this run sends whatever is eligible
        try:
            async with self._run_lock:
                return await self._run_locked(self._backend, budget, trigger)
        finally:
            self._active_runs -= 1
            if not self._active_runs:
                self._update_scheduled(self._scheduled)
                self._after_run()
            self._wake()

    async def _run_locked(
        self, backend: RemoteBackend, budget: float | None, trigger: str
    ) -> SyncSummary:
        commits_before = self._commits
        probe = getattr(self._device, "probe_network", None)
        now = self._clock.monotonic()
        if callable(probe) and (self._probed_at is None or now - self._probed_at > _PROBE_FRESH):
            # Reachability is only known by trying; a recent answer is good enough (the
            # run itself finds out if the remote went away since).
            with anyio.CancelScope(shield=True):
                await probe()
            self._probed_at = now
        self._set_status(BackgroundSyncStatus.RUNNING)
        logger.debug("sync run starting (%s)", trigger)
        runner = SyncRunner(
            self._targets,
            backend,
            clock=self._clock,
            device=self._device,
            batch_size=self._config.batch_size,
            lease_for=self._lease_for,
            budget=budget,
            streams=self._streams,
            task_id=SYNC_TASK_ID,
        )
        scope = anyio.CancelScope()
        self._run_scopes.add(scope)
        summary: SyncSummary | None = None
        try:
            with scope:
                summary = await runner.run()
        except BaseException:
            # A run cut short by the service stopping gave its ops back: not a failure.
            stopping = self._state is ServiceState.STOPPED
            self._set_status(BackgroundSyncStatus.IDLE if stopping else BackgroundSyncStatus.FAILED)
            raise
        finally:
            self._run_scopes.discard(scope)
        if summary is None:  # cancelled through cancel_sync(): the runner gave its ops back
            summary = runner.last_summary
            if summary is None:
                raise SyncError("the sync run was cancelled before it started")
        self._last_summary = summary
        if self._commits == commits_before and summary.stop_reason is not SyncStopReason.BUDGET:
            self._stale = frozenset(_TRIGGERED)
        self._set_status(status_after(summary))
        return summary

    def _set_status(self, status: BackgroundSyncStatus) -> None:
        if self._statuses.last is not status:
            self._statuses.publish(status)

    def _update_scheduled(self, scheduled: bool) -> None:
        """After the scheduler changed: ``SCHEDULED`` while a run waits and none runs."""
        self._scheduled = scheduled
        if self._state is not ServiceState.RUNNING or self._active_runs:
            return
        if scheduled and self.status is not BackgroundSyncStatus.RUNNING:
            self._set_status(BackgroundSyncStatus.SCHEDULED)

    def _scheduler_changed(self, scheduled: bool, *, look: bool = True) -> None:
        """Adapters call this (on the loop thread) after every change of sync work;
        ``look=False`` when the change brings the trigger loop nothing to decide on (work
        it asked for was recorded, or started)."""
        self._update_scheduled(scheduled)
        if look:
            self._critical_asked = False  # the run asked for may have ended or been dropped
            self._wake()

    def _wake(self) -> None:
        if self._poke is not None:
            self._poke.set()

    def _call_in_loop(self, func: Callable[[], None]) -> None:
        if self._loop_thread is None or threading.get_ident() == self._loop_thread:
            func()
            return
        with contextlib.suppress(RuntimeError):  # the loop has ended: nothing to wake
            anyio.from_thread.run_sync(func, token=self._token)

    def _on_device_change(self, _state: DeviceState) -> None:
        if self._state is ServiceState.RUNNING:
            self._call_in_loop(self._fresh_look)
            self._call_in_loop(self._stream_news)

    def _stream_news(self) -> None:
        """Something the events stream depends on changed (see :mod:`._pokes`)."""

    def _after_run(self) -> None:
        """A run ended (see :mod:`._pokes`)."""

    def _fresh_look(self) -> None:
        """Something changed (a commit, the device): ask again for what waits."""
        self._stale = frozenset()
        self._controls_due = True
        self._wake()

    async def _follow_changes(self, source: ChangeSource) -> None:
        # A commit made before the source follows the file (a save right after the
        # service started) wakes nobody: look once more, as the source starts following
        # (in this same step, for a source that subscribes before its first await).
        self._fresh_look()
        try:
            async for _ in source.changes():
                self._commits += 1
                self._fresh_look()
        except StoreClosedError:
            logger.info("the store was closed: no longer watching commits")

    async def _trigger_loop(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        assert self._poke is not None
        while True:
            self._poke = poke = anyio.Event()
            wake_at: float | None = None
            try:
                if self._controls_due:  # a commit came (other processes flip switches so)
                    self._controls_due = False
                    try:
                        await self._follow_controls()
                    except BaseException:
                        self._controls_due = True
                        raise
                if not self._active_runs and not self._critical_asked:
                    wake_at = await self._check_queue()
                # else: the run under way (or the CRITICAL run asked for, which starts at
                # once) sends what is eligible; its end wakes this loop, which looks then
                # (looking meanwhile only competes with the run's work).
            except StoreClosedError:
                logger.info("the store was closed: the trigger loop stops")
                self._pass_finished()
                return
            except NexusStoreError:
                logger.exception("looking at the queue failed; trying again on the next change")
            self._pass_finished()
            if await _wait_until(poke, wake_at, self._clock):
                # An op's backoff, a lease or the remote's pause ended: new work.
                self._stale = frozenset()

    def _pass_finished(self) -> None:
        self._passes += 1
        done, self._pass_done = self._pass_done, anyio.Event()
        if done is not None:
            done.set()

    _sync_enabled: bool = True
    _critical_asked: bool = False
    """Whether a CRITICAL run was asked for and has not started (nor ended) since."""
    _controls_due: bool = True
    """Whether a commit (or a device change) came since the job switches were last read."""

    async def _follow_controls(self) -> None:
        """Apply job switches flipped from another process (see :mod:`._job_control`)."""
        await anyio.lowlevel.checkpoint()

    async def _check_queue(self) -> float | None:
        if self._state is not ServiceState.RUNNING:  # stopping: its scheduler is closing
            return None
        if not self.is_supported or not self._config.enabled or self._backend is None:
            return None
        if not self._sync_enabled:  # switched off by a person: saves stay queued
            return None
        # A few indexed reads: on the loop when the connection is free (a hop through a
        # worker thread costs more, and on a busy machine waits for the scheduler twice).
        next_eligible, pause, queued = await read_soon(self._database, self._look)
        now = self._clock.now()
        resumed = pause is not None and pause.until == self._resumed_until
        plan = plan_requests(
            now,
            next_eligible,
            stale=self._stale,
            paused_until=None if pause is None else pause.until,
            queued=queued,
            resumed=resumed,
        )
        if pause is not None and pause.until <= now and plan.request is not None:
            self._resumed_until = pause.until
        if plan.request is not None:
            try:
                result = await self._request_run(plan.request)
            except NexusStoreError:
                logger.exception("asking for a %s sync run failed", plan.request.name)
            else:
                if result is ScheduleResult.ACCEPTED:
                    self._critical_asked = plan.request is SyncPriority.CRITICAL
                    if not self._critical_asked:
                        self._update_scheduled(await self._has_schedule())
                    # else: the run starts at once (RUNNING); should it wait instead
                    # (constraints), the adapter's report of the change says SCHEDULED.
                    # Reading the scheduler here would only delay the run.
                else:
                    logger.info("a %s sync run was refused: %s", plan.request.name, result.value)
        return plan.wake_at

    def _remote_pause(self) -> RemotePause | None:
        """The backend's pause recorded in the file, if any (see :mod:`.engine._pause`)."""
        if self._backend is None:
            return None
        if self._pauses is None:
            self._pauses = RemotePauses(self._database, remote_identity(self._backend))
        return self._pauses.current(self._clock.now())

    def _look(self) -> tuple[dict[SyncPriority, float | None], RemotePause | None, bool]:
        """What the trigger loop decides on (short reads): when each triggering
        priority is next eligible, the remote's pause, and whether anything is queued."""
        pause = self._remote_pause()
        queued = pause is not None and any(
            t.queue.next_eligible_at() is not None for t in self._targets
        )
        return self._next_eligible(), pause, queued

    def _next_eligible(self) -> dict[SyncPriority, float | None]:
        queues: dict[int, PrioritySyncQueue] = {id(t.queue): t.queue for t in self._targets}
        found: dict[SyncPriority, float | None] = {}
        for priority in _TRIGGERED:
            times = [
                when
                for queue in queues.values()
                if (when := queue.next_eligible_at(priorities=[priority])) is not None
            ]
            found[priority] = min(times) if times else None
        return found

    async def _probe_loop(self) -> None:
        """Re-probe reachability (quickly while offline) so waiting work learns it is back."""
        probe = getattr(self._device, "probe_network", None)
        assert callable(probe)
        last: bool | None = None
        offline_delay = 2.0
        while True:
            connected = bool(await probe())
            self._probed_at = self._clock.monotonic()
            if last is not None and connected != last:
                self._device_reachability_changed()
            last = connected
            if connected:
                offline_delay = 2.0
                await self._clock.sleep(60.0)
            else:
                await self._clock.sleep(offline_delay)
                offline_delay = min(60.0, offline_delay * 2)

    def _device_reachability_changed(self) -> None:
        """The probe saw the network come or go: tell the scheduler, look again."""
        self._fresh_look()
        self._stream_news()
