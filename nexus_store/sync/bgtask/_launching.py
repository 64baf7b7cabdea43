"""The BGTask-like scheduler's loop: plan a pass, launch, supervise, expire, record.

The loop sleeps until the next possible launch or a wake-up (a submit, a device change, a
task ending); each pass asks the launch policy what may start (BG-14). A launch runs its
handler in the scheduler's task group with a watchdog on the budget: the expiration
handler fires ``expiration_lead`` seconds before the end, and a task that has not called
``set_task_completed`` by then is killed and recorded unsuccessful (BG-7, BG-8).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import threading
from collections import deque
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

from ..._clock import Clock
from ..._exceptions import NexusStoreError
from ..device._device import DeviceState, DeviceStateProvider
from ._handle import BGTaskHandle, BGTaskHandler, LaunchRecord, _wait
from ._launch import AppUsage, LaunchContext, LaunchPolicy, plan_launches, unmet_conditions
from ._persistence import _Tables
from ._requests import USAGE_WINDOW, BGTaskRequest, RequestKind, handler_key

__all__: list[str] = []

logger = logging.getLogger(__name__)


class _Phase(enum.Enum):
    UNSTARTED = "unstarted"
    RUNNING = "running"
    CLOSED = "closed"


class _SchedulerBase:
    """The state the scheduler's parts share (set by :meth:`~._bgtask.BGTaskScheduler.__init__`)."""

    _declared: frozenset[str]
    _clock: Clock
    _device: DeviceStateProvider
    _policy: LaunchPolicy
    _budgets: dict[RequestKind, float | None]
    _lead: float
    _progress_timeout: float
    _continued_slots: int
    _poll: float
    _handlers: dict[str, BGTaskHandler]
    _registration_closed: bool
    _running: dict[str, BGTaskHandle]
    _reasons: dict[str, str]
    _listeners: list[Callable[[LaunchRecord], None]]
    _phase: _Phase
    _passes: int
    _stack: contextlib.AsyncExitStack | None
    _tg: anyio.abc.TaskGroup | None
    _wake: anyio.Event | None
    _pass_done: anyio.Event | None
    _token: anyio.lowlevel.EventLoopToken | None
    _thread: int | None
    _unsubscribe: Callable[[], None] | None
    _tables: _Tables
    _pending: dict[str, tuple[int, BGTaskRequest]]
    _seq: int
    _recent: deque[float]
    _force_quit: bool
    _app_last_opened: float | None


class _Launching(_SchedulerBase):
    """The scheduler's loop and the life of each launch."""

    # -- the loop ---------------------------------------------------------------------

    def _missing_handlers(self) -> list[str]:
        return sorted(self._declared - self._handlers.keys())

    def _wake_loop(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _on_device_change(self, _state: DeviceState) -> None:
        if self._phase is not _Phase.RUNNING:
            return
        if threading.get_ident() == self._thread:
            self._wake_loop()
            return
        # A device probe on another thread: hop onto the event loop to set the event.
        with contextlib.suppress(RuntimeError):
            anyio.from_thread.run_sync(self._wake_loop, token=self._token)

    async def _loop(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        while True:
            self._wake = anyio.Event()
            deadline = self._plan_pass()
            await _wait(self._wake, deadline, self._clock.now, self._clock, self._pass_finished)

    def _pass_finished(self) -> None:
        """The loop is waiting again: release :meth:`settle` callers."""
        self._passes += 1
        done, self._pass_done = self._pass_done, anyio.Event()
        assert done is not None
        done.set()

    def _usage(self, now: float) -> AppUsage:
        while self._recent and self._recent[0] < now - USAGE_WINDOW:
            self._recent.popleft()
        return AppUsage(launch_times=tuple(self._recent), app_last_opened=self._app_last_opened)

    def _plan_pass(self) -> float | None:
        """Look at the time and the device once: terminate, launch, and say until when to
        sleep (a clock time; None: until woken)."""
        now = self._clock.now()
        device = self._device.current()
        self._check_running_conditions(device)
        if self._force_quit:
            self._reasons = dict.fromkeys(self._pending, "the user force-quit the app")
            return None
        missing = self._missing_handlers()
        if missing:
            self._reasons = dict.fromkeys(self._pending, f"waiting for handlers of {missing}")
            return None
        self._start_queued_continued()
        blocked = {
            identifier: "a launch of this identifier is still running"
            for identifier in self._pending
            if identifier in self._running
        }
        requests = [request for _, request in self._pending.values()]
        plan = plan_launches(
            requests, LaunchContext(now, device, self._usage(now)), self._policy, blocked=blocked
        )
        self._reasons = dict(plan.reasons)
        for _, queued in self._pending.values():
            if queued.kind is RequestKind.CONTINUED_PROCESSING:
                self._reasons[queued.identifier] = "queued: no continued-processing slot is free"
        for request in plan.due:
            self._launch(request)
        deadline = plan.next_at
        processing_running = any(h.kind is RequestKind.PROCESSING for h in self._running.values())
        if self._unsubscribe is None and (plan.waiting_on_device or processing_running):
            poll_at = now + self._poll
            deadline = poll_at if deadline is None else min(deadline, poll_at)
        return deadline

    def _check_running_conditions(self, device: DeviceState) -> None:
        """Terminate processing tasks whose conditions were met and no longer are (BG-9)."""
        for handle in list(self._running.values()):
            if handle.kind is not RequestKind.PROCESSING:
                continue  # refresh tasks are not affected by device use
            unmet = unmet_conditions(handle._request, device)
            if handle._conditions_met and unmet:
                self._expire(handle, "terminated: " + "; ".join(unmet))
            handle._conditions_met = not unmet

    def _continued_can_start(self, request: BGTaskRequest) -> bool:
        if self._phase is not _Phase.RUNNING or self._force_quit:
            return False
        if request.identifier in self._running:
            return False
        running = sum(
            1 for h in self._running.values() if h.kind is RequestKind.CONTINUED_PROCESSING
        )
        if running >= self._continued_slots:
            return False
        # FIFO: a request queued earlier goes first.
        return not any(
            r.kind is RequestKind.CONTINUED_PROCESSING and r.identifier != request.identifier
            for _, r in self._pending.values()
        )

    def _start_queued_continued(self) -> None:
        for _, request in list(self._pending.values()):
            if request.kind is not RequestKind.CONTINUED_PROCESSING:
                continue
            running = sum(
                1 for h in self._running.values() if h.kind is RequestKind.CONTINUED_PROCESSING
            )
            if running >= self._continued_slots:
                return
            if request.identifier not in self._running:
                self._launch(request)

    def _launch(self, request: BGTaskRequest) -> BGTaskHandle:
        """Start one launch: the request leaves the pending set (BG-6) and the handler runs."""
        assert self._tg is not None
        key = handler_key(self._declared, request)
        assert key is not None
        handler = self._handlers[key]
        self._registration_closed = True
        now, mono = self._clock.now(), self._clock.monotonic()
        record_id = self._tables.start_launch(request, now)
        self._pending.pop(request.identifier, None)
        self._reasons.pop(request.identifier, None)
        self._recent.append(now)
        budget = self._budgets[request.kind]
        handle = BGTaskHandle(
            self, record_id, request, started_at=now, started_mono=mono, budget=budget
        )
        if budget is None:
            handle._expire_at = mono + self._progress_timeout
            handle._expire_reason = f"no progress for {self._progress_timeout:g} s"
        else:
            handle._expire_at = mono + budget - self._lead_for(handle)
            handle._kill_at = mono + budget
            handle._expire_reason = f"the time budget ({budget:g} s) is running out"
        handle._kill_message = "killed: set_task_completed was not called before the budget ended"
        handle._conditions_met = not unmet_conditions(request, self._device.current())
        self._running[request.identifier] = handle
        self._notify(
            LaunchRecord(
                id=record_id, identifier=request.identifier, kind=request.kind, started_at=now
            )
        )
        self._tg.start_soon(self._supervise, handle, handler, name=f"bgtask {request.identifier}")
        return handle

    def _lead_for(self, handle: BGTaskHandle) -> float:
        budget = handle.budget
        return self._lead if budget is None else min(self._lead, budget / 2)

    async def _supervise(self, handle: BGTaskHandle, handler: BGTaskHandler) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._call_handler, handle, handler)
                tg.start_soon(self._watch, handle)
                await handle._done.wait()
                # Completed, expired without a handler, or killed: the handler stops here.
                tg.cancel_scope.cancel()
        finally:
            self._complete(handle, False, "the scheduler closed before the task finished")
            self._record_end(handle)

    async def _call_handler(self, handle: BGTaskHandle, handler: BGTaskHandler) -> None:
        try:
            await handler(handle)
        except Exception as exc:
            logger.exception("BGTask handler for %s raised", handle.identifier)
            self._complete(handle, False, f"the handler raised {type(exc).__name__}: {exc}")

    async def _watch(self, handle: BGTaskHandle) -> None:
        """Fire the expiration when it is due, then kill the task at its deadline (BG-7/8)."""
        while not handle.completed:
            now = self._clock.monotonic()
            if not handle.expired:
                if now >= handle._expire_at:
                    self._expire(handle, handle._expire_reason)
                    continue
                target = handle._expire_at
            else:
                if now >= handle._kill_at:
                    self._complete(handle, False, handle._kill_message)
                    return
                target = handle._kill_at
            handle._changed = anyio.Event()
            deadline = None if math.isinf(target) else target
            await _wait(handle._changed, deadline, self._clock.monotonic, self._clock)

    def _expire(self, handle: BGTaskHandle, reason: str) -> None:
        """Begin expiration: call the expiration handler and set the kill deadline; with no
        expiration handler, mark the task complete and unsuccessful now (BG-8)."""
        if handle.completed or handle.expired:
            return
        handle._expired = True
        handle._changed.set()
        callback = handle.expiration_handler
        if callback is None:
            self._complete(
                handle,
                False,
                f"{reason}; no expiration handler was set, so the task was marked "
                "complete and unsuccessful",
            )
            return
        # An early expiry (simulated, device in use, user cancel) leaves only the lead time.
        handle._kill_at = min(handle._kill_at, self._clock.monotonic() + self._lead_for(handle))
        handle._kill_message = f"{reason}; killed: set_task_completed was not called in time"
        try:
            callback()
        except Exception:
            logger.exception("the expiration handler of %s raised", handle.identifier)

    def _progressed(self, handle: BGTaskHandle) -> None:
        if handle.kind is RequestKind.CONTINUED_PROCESSING and not handle.expired:
            handle._expire_at = self._clock.monotonic() + self._progress_timeout
            handle._changed.set()

    def _complete(self, handle: BGTaskHandle, success: bool, message: str) -> None:
        if handle.completed:
            return
        handle._success = success
        handle._message = message
        handle._ended_at = self._clock.now()
        handle._duration = max(0.0, self._clock.monotonic() - handle._started_mono)
        handle._done.set()
        handle._changed.set()

    def _record_end(self, handle: BGTaskHandle) -> None:
        record = LaunchRecord(
            id=handle._record_id,
            identifier=handle.identifier,
            kind=handle.kind,
            started_at=handle.started_at,
            ended_at=handle._ended_at,
            duration=handle._duration,
            success=handle._success,
            message=handle._message,
        )
        try:
            self._tables.finish_launch(record)
        except NexusStoreError:
            logger.exception("could not record the end of %s", handle.identifier)
        handle._record = record
        if self._running.get(handle.identifier) is handle:
            del self._running[handle.identifier]
        handle._finished.set()
        self._notify(record)
        self._wake_loop()

    def _notify(self, record: LaunchRecord) -> None:
        for callback in list(self._listeners):
            try:
                callback(record)
            except Exception:
                logger.exception("a BGTask launch listener raised")
