"""A BGTaskScheduler-like runtime: declared identifiers, one-shot requests, time budgets.

It reproduces iOS's BackgroundTasks scheduler (statements BG-1…BG-15, pinned one by one in
``tests/sync/bgtask/test_bgtask_spec.py``) as a reusable engine that the BGTask-like
:class:`BackgroundSyncService` adapter wraps:

- Identifiers are declared when the scheduler is built; every one needs a handler,
  registered before the first submit, in every process (BG-1).
- ``submit`` keeps at most one app-refresh and ten processing requests pending (BG-3); a
  request for a pending identifier replaces it (BG-4). Requests are one-shot (BG-6): a
  launched request is gone, and the handler resubmits to run again.
- A :class:`~nexus_store.sync.bgtask.LaunchPolicy` decides when a pending request
  launches (BG-14), never before ``earliest_begin`` (BG-5).
- Each launch has a time budget (BG-7). The expiration handler fires ``expiration_lead``
  seconds before it ends; at the end a task that has not called ``set_task_completed`` is
  killed (its handler's anyio scope is cancelled) and recorded unsuccessful; with no
  expiration handler, expiry marks it complete and unsuccessful at once (BG-8). Nothing is
  retried automatically.
- Processing tasks launch only while the device is idle and are terminated (expiration
  handler, then kill) when it becomes active or another of their conditions is lost (BG-9).
- ``force_quit()`` suppresses launches until ``app_opened()`` (BG-12);
  ``simulate_launch``/``simulate_expiration`` are the debug APIs (BG-13).

Pending requests, the force-quit flag and a launch history live in the SQLite database
(tables ``nx_bg_*``), so a restart keeps them. One scheduler per database file: two
processes running schedulers on one file would launch the same requests.

All time goes through the injected :class:`~nexus_store.Clock`. The loop sleeps until the
next possible launch or a wake-up (a submit, a device change, a task ending): with nothing
due it uses no CPU. Every method must be called from the event loop's thread (a
synchronous app reaches it through an anyio blocking portal); device notifications may
come from any thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

from ..._clock import Clock, SystemClock
from ..._database import Database
from ..._exceptions import (
    ImmediateRunIneligibleError,
    LifecycleError,
    NotPermittedError,
    UnavailableError,
    UnknownWorkError,
)
from ..device._device import DeviceStateProvider, SimulatedDevice
from ._handle import BGTaskHandle, BGTaskHandler, LaunchRecord
from ._launch import LaunchPolicy, OpportunisticLaunchPolicy
from ._launching import _Launching, _Phase
from ._persistence import _Tables
from ._requests import (
    DEFAULT_EXPIRATION_LEAD,
    DEFAULT_PROCESSING_BUDGET,
    DEFAULT_REFRESH_BUDGET,
    USAGE_WINDOW,
    AppRefreshRequest,
    BGTaskRequest,
    ContinuedProcessingRequest,
    RequestKind,
    SubmissionStrategy,
    check_pending_limits,
    copy_request,
    handler_key,
    validate_identifiers,
    validate_request,
)

__all__ = ["BGTaskScheduler"]

logger = logging.getLogger(__name__)


class BGTaskScheduler(_Launching):
    """A BGTaskScheduler-like engine (see the module docstring for the rules).

    Args:
        database: where pending requests and the launch history are kept.
        identifiers: the permitted task identifiers (iOS ``BGTaskSchedulerPermittedIdentifiers``);
            ``"prefix.*"`` declares a wildcard for continued-processing requests.
        handlers: handlers to register at once (same as calling :meth:`register`).
        clock: the time source (``SystemClock`` by default; ``FakeClock`` in tests).
        device: the device state; a provider with ``subscribe`` (like ``SimulatedDevice``)
            wakes the scheduler on every change, any other is polled every
            ``device_poll_interval`` seconds while something waits on the device.
        policy: when pending requests launch (``OpportunisticLaunchPolicy`` by default).
        refresh_budget: seconds an app-refresh launch may run (default 30).
        processing_budget: seconds a processing launch may run (default 300).
        expiration_lead: the expiration handler fires this long before the budget ends
            (at most half the budget).
        progress_timeout: a continued-processing task whose progress does not advance for
            this long is expired.
        continued_slots: how many continued-processing tasks may run at once.
        device_poll_interval: seconds between device polls for providers without ``subscribe``.
        history_limit: launch history rows kept.

    Raises:
        InvalidWorkRequestError: a malformed identifier.
        ValueError: a non-positive budget, lead or limit.
    """

    def __init__(
        self,
        database: Database,
        identifiers: Iterable[str],
        *,
        handlers: Mapping[str, BGTaskHandler] | None = None,
        clock: Clock | None = None,
        device: DeviceStateProvider | None = None,
        policy: LaunchPolicy | None = None,
        refresh_budget: float = DEFAULT_REFRESH_BUDGET,
        processing_budget: float = DEFAULT_PROCESSING_BUDGET,
        expiration_lead: float = DEFAULT_EXPIRATION_LEAD,
        progress_timeout: float = 60.0,
        continued_slots: int = 1,
        device_poll_interval: float = 60.0,
        history_limit: int = 1000,
    ) -> None:
        for name, value in (
            ("refresh_budget", refresh_budget),
            ("processing_budget", processing_budget),
            ("expiration_lead", expiration_lead),
            ("progress_timeout", progress_timeout),
            ("device_poll_interval", device_poll_interval),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if continued_slots < 1 or history_limit < 1:
            raise ValueError("continued_slots and history_limit must be at least 1")
        self._declared = validate_identifiers(identifiers)
        self._clock: Clock = clock or SystemClock()
        self._device: DeviceStateProvider = device or SimulatedDevice()
        self._policy: LaunchPolicy = policy or OpportunisticLaunchPolicy()
        self._budgets: dict[RequestKind, float | None] = {
            RequestKind.APP_REFRESH: float(refresh_budget),
            RequestKind.PROCESSING: float(processing_budget),
            RequestKind.CONTINUED_PROCESSING: None,
        }
        self._lead = float(expiration_lead)
        self._progress_timeout = float(progress_timeout)
        self._continued_slots = continued_slots
        self._poll = float(device_poll_interval)
        self._handlers: dict[str, BGTaskHandler] = {}
        self._registration_closed = False
        self._running: dict[str, BGTaskHandle] = {}
        self._reasons: dict[str, str] = {}
        self._listeners: list[Callable[[LaunchRecord], None]] = []
        self._phase = _Phase.UNSTARTED
        self._passes = 0
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake: anyio.Event | None = None
        self._pass_done: anyio.Event | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._thread: int | None = None
        self._unsubscribe: Callable[[], None] | None = None

        self._tables = _Tables(database, history_limit)
        self._tables.recover_interrupted()
        self._pending: dict[str, tuple[int, BGTaskRequest]] = {}
        dropped: list[str] = []
        for seq, request in self._tables.load_pending():
            if handler_key(self._declared, request) is None:
                dropped.append(request.identifier)  # no longer declared by this app version
            else:
                self._pending[request.identifier] = (seq, request)
        if dropped:
            logger.warning("dropping pending BGTask requests no longer declared: %s", dropped)
            self._tables.delete_pending(dropped)
        self._seq = max((seq for seq, _ in self._pending.values()), default=0)
        now = self._clock.now()
        self._recent: deque[float] = deque(self._tables.launch_times_since(now - USAGE_WINDOW))
        self._force_quit = self._tables.get_state("force_quit") == "1"
        opened = self._tables.get_state("app_last_opened")
        self._app_last_opened = float(opened) if opened is not None else None
        for identifier, handler in (handlers or {}).items():
            self.register(identifier, handler)

    async def __aenter__(self) -> Self:
        if self._phase is not _Phase.UNSTARTED:
            raise LifecycleError(f"the scheduler is {self._phase.value}; it runs once")
        self._wake = anyio.Event()
        self._pass_done = anyio.Event()
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.get_ident()
        stack = contextlib.AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._phase = _Phase.RUNNING
        try:
            subscribe = getattr(self._device, "subscribe", None)
            if callable(subscribe):
                self._unsubscribe = subscribe(self._on_device_change)
            await self._tg.start(self._loop)
        except BaseException:
            self._phase = _Phase.CLOSED
            self._tg.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._tg is None or self._stack is None:
            raise LifecycleError("the scheduler was not started")
        # Closing ends the process's launches, as when iOS suspends the app.
        self._tg.cancel_scope.cancel()
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            self._phase = _Phase.CLOSED

    @property
    def running(self) -> bool:
        """Whether the scheduler's loop is running (inside ``async with``)."""
        return self._phase is _Phase.RUNNING

    def _check_open(self) -> None:
        if self._phase is _Phase.CLOSED:
            raise LifecycleError("the scheduler is closed")

    def _check_running(self) -> None:
        if self._phase is not _Phase.RUNNING:
            raise LifecycleError(f"the scheduler is {self._phase.value}: use 'async with'")

    @property
    def identifiers(self) -> frozenset[str]:
        """The declared identifiers (BG-1)."""
        return self._declared

    def register(self, identifier: str, handler: BGTaskHandler) -> None:
        """Register the launch handler of a declared identifier (BG-1).

        Raises:
            NotPermittedError: the identifier was not declared.
            LifecycleError: registration is closed (after the first submit or launch), or
                the identifier already has a handler.
        """
        self._check_open()
        if identifier not in self._declared:
            raise NotPermittedError(f"task identifier {identifier!r} was not declared")
        if identifier in self._handlers:
            raise LifecycleError(f"a handler for {identifier!r} is already registered")
        if self._registration_closed:
            raise LifecycleError("register every handler before the first submit or launch (BG-1)")
        self._handlers[identifier] = handler
        self._wake_loop()  # requests kept from an earlier process may now launch

    def submit(self, request: BGTaskRequest) -> None:
        """Submit a request; one already pending for the identifier is replaced (BG-4).

        A continued-processing request starts at once when a slot is free, else it is
        queued (``strategy=QUEUE``) or refused (``strategy=FAIL``).

        Raises:
            InvalidWorkRequestError: a malformed request.
            NotPermittedError: the identifier was not declared (BG-1).
            UnavailableError: background refresh is off for the app (BG-10).
            LifecycleError: a declared identifier has no handler yet, or the scheduler is closed.
            TooManyPendingTaskRequestsError: the pending limits (BG-3).
            ImmediateRunIneligibleError: a ``FAIL`` continued request that cannot start now.
        """
        self._check_open()
        request = copy_request(validate_request(request))
        if handler_key(self._declared, request) is None:
            raise NotPermittedError(
                f"task identifier {request.identifier!r} is not permitted for a "
                f"{request.kind.value} request: declare it when building the scheduler"
            )
        continued = request.kind is RequestKind.CONTINUED_PROCESSING
        if not continued and not self._device.current().background_refresh_enabled:
            raise UnavailableError("background refresh is off for the app")
        missing = self._missing_handlers()
        if missing:
            raise LifecycleError(f"no handler registered for {missing}: register before submit")
        check_pending_limits([r for _, r in self._pending.values()], request)
        start_now = continued and self._continued_can_start(request)
        if (
            isinstance(request, ContinuedProcessingRequest)
            and request.strategy is SubmissionStrategy.FAIL
            and not start_now
        ):
            raise ImmediateRunIneligibleError(
                f"continued-processing task {request.identifier!r} cannot start now"
            )
        self._registration_closed = True
        self._seq += 1
        now = self._clock.now()
        self._tables.save_pending(request, self._seq, now)
        self._pending.pop(request.identifier, None)
        self._pending[request.identifier] = (self._seq, request)
        if start_now:
            self._launch(request)
        self._wake_loop()

    def cancel(self, identifier: str) -> None:
        """Remove the pending request for ``identifier``, if any (BG-11). Running tasks go on."""
        self._check_open()
        if self._pending.pop(identifier, None) is not None:
            self._tables.delete_pending([identifier])
            self._wake_loop()

    def cancel_all(self) -> None:
        """Remove every pending request (BG-11)."""
        self._check_open()
        identifiers = list(self._pending)
        self._pending.clear()
        self._tables.delete_pending(identifiers)
        self._wake_loop()

    def pending_requests(self) -> list[BGTaskRequest]:
        """Copies of the pending requests, in submission order; changing them has no effect."""
        return [copy_request(request) for _, request in self._pending.values()]

    def pending_reason(self, identifier: str) -> str | None:
        """Why ``identifier`` has not launched yet, in words; None if it is not pending."""
        if identifier not in self._pending:
            return None
        return self._reasons.get(identifier, "pending: not yet planned")

    @property
    def force_quit_active(self) -> bool:
        """Whether launches are suppressed because the user force-quit the app (BG-12)."""
        return self._force_quit

    def force_quit(self) -> None:
        """The user force-quit the app: kill running tasks, drop queued continued-processing
        requests, and launch nothing until :meth:`app_opened` (BG-12, BG-15). Persisted."""
        self._check_open()
        self._force_quit = True
        self._tables.set_state("force_quit", "1")
        queued = [
            i for i, (_, r) in self._pending.items() if r.kind is RequestKind.CONTINUED_PROCESSING
        ]
        for identifier in queued:
            del self._pending[identifier]
        self._tables.delete_pending(queued)
        for handle in list(self._running.values()):
            self._complete(handle, False, "killed: the user force-quit the app")
        self._wake_loop()

    def app_opened(self) -> None:
        """The user opened the app: clears the force-quit flag and records the time."""
        self._check_open()
        self._force_quit = False
        self._app_last_opened = self._clock.now()
        self._tables.set_state("force_quit", None)
        self._tables.set_state("app_last_opened", repr(self._app_last_opened))
        self._wake_loop()

    def simulate_launch(self, identifier: str) -> BGTaskHandle:
        """Launch the pending request for ``identifier`` now, whatever the policy, the
        device, ``earliest_begin`` or the force-quit flag say (debug API, BG-13).

        Raises:
            NotPermittedError: the identifier was not declared.
            UnknownWorkError: no request is pending for it.
            LifecycleError: not running, no handler registered, or already running.
        """
        self._check_running()
        entry = self._pending.get(identifier)
        if entry is None:
            if not self._permitted(identifier):
                raise NotPermittedError(f"task identifier {identifier!r} was not declared")
            raise UnknownWorkError(f"no pending request for {identifier!r}: submit one first")
        request = entry[1]
        if identifier in self._running:
            raise LifecycleError(f"{identifier!r} is already running")
        key = handler_key(self._declared, request)
        if key not in self._handlers:
            raise LifecycleError(f"no handler registered for {key!r}")
        handle = self._launch(request)
        self._wake_loop()
        return handle

    def simulate_expiration(self, identifier: str) -> None:
        """Fire the expiration of the running task ``identifier`` now (debug API, BG-13).

        Raises:
            UnknownWorkError: no task with that identifier is running.
        """
        self._expire(self._running_handle(identifier), "simulated expiration")

    def cancel_by_user(self, identifier: str) -> None:
        """The user cancelled a running continued-processing task from its Live Activity
        (BG-15): its expiration handler fires, then it ends unsuccessful.

        Raises:
            UnknownWorkError: no continued-processing task with that identifier is running.
        """
        handle = self._running_handle(identifier)
        if handle.kind is not RequestKind.CONTINUED_PROCESSING:
            raise UnknownWorkError(f"{identifier!r} is not a continued-processing task")
        self._expire(handle, "cancelled by the user")

    def _running_handle(self, identifier: str) -> BGTaskHandle:
        handle = self._running.get(identifier)
        if handle is None:
            raise UnknownWorkError(f"no task {identifier!r} is running")
        return handle

    def _permitted(self, identifier: str) -> bool:
        return any(
            handler_key(self._declared, probe) is not None
            for probe in (AppRefreshRequest(identifier), ContinuedProcessingRequest(identifier))
        )

    def running_task(self, identifier: str) -> BGTaskHandle | None:
        """The handle of the running launch of ``identifier``, if any."""
        return self._running.get(identifier)

    def running_tasks(self) -> list[BGTaskHandle]:
        """Handles of every running launch."""
        return list(self._running.values())

    def history(self, identifier: str | None = None, *, limit: int = 100) -> list[LaunchRecord]:
        """The launch history, newest first (running launches included)."""
        return self._tables.history(identifier, limit)

    def subscribe(self, callback: Callable[[LaunchRecord], None]) -> Callable[[], None]:
        """Call ``callback(record)`` when a launch starts (``success is None``) and when it
        ends; returns a function that unsubscribes."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    async def settle(self) -> None:
        """Wait until the loop has looked at the current time and device state once more
        and is waiting again (its next timer, if any, is set).

        Tests call it after moving a ``FakeClock`` or changing the device, before asserting
        that something did *not* launch.
        """
        self._check_running()
        start = self._passes
        self._wake_loop()
        while self._passes == start and self._phase is _Phase.RUNNING:
            assert self._pass_done is not None
            await self._pass_done.wait()

    def __repr__(self) -> str:
        return (
            f"BGTaskScheduler({sorted(self._declared)!r}, {self._phase.value}, "
            f"pending={len(self._pending)}, running={len(self._running)})"
        )
