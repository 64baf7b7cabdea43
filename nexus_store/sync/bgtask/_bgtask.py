"""A BGTaskScheduler-like runtime: declared identifiers, one-shot requests, time budgets.

It reproduces iOS's BackgroundTasks scheduler (``specs/scheduling.md`` BG-1…BG-15) as a
reusable engine that the BGTask-like :class:`BackgroundSyncService` adapter wraps:

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
import enum
import json
import logging
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Self, TypeAlias

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict

from ..._clock import Clock, SystemClock
from ..._database import Database
from ..._exceptions import (
    ImmediateRunIneligibleError,
    LifecycleError,
    NexusStoreError,
    NotPermittedError,
    UnavailableError,
    UnknownWorkError,
)
from .._task import BackgroundSyncTask, TaskOutcome, TaskResult
from ..device._device import DeviceState, DeviceStateProvider, SimulatedDevice
from ._requests import (
    DEFAULT_EXPIRATION_LEAD,
    DEFAULT_PROCESSING_BUDGET,
    DEFAULT_REFRESH_BUDGET,
    USAGE_WINDOW,
    AppRefreshRequest,
    AppUsage,
    BGTaskRequest,
    ContinuedProcessingRequest,
    LaunchContext,
    LaunchPolicy,
    OpportunisticLaunchPolicy,
    RequestKind,
    SubmissionStrategy,
    check_pending_limits,
    copy_request,
    handler_key,
    plan_launches,
    request_from_dict,
    request_to_dict,
    unmet_conditions,
    validate_identifiers,
    validate_request,
)

__all__ = [
    "BGTaskHandle",
    "BGTaskHandler",
    "BGTaskScheduler",
    "LaunchRecord",
    "handler_for_task",
]

logger = logging.getLogger(__name__)

BGTaskHandler: TypeAlias = Callable[["BGTaskHandle"], Awaitable[None]]
"""``async def handler(task: BGTaskHandle) -> None``: runs one launch."""

ExpirationHandler: TypeAlias = Callable[[], object]
"""Called (synchronously) shortly before a launch's time runs out."""


class LaunchRecord(BaseModel):
    """One launch in the persisted history.

    ``ended_at``, ``duration`` and ``success`` are ``None`` while the launch runs;
    ``ended_at``/``duration`` stay ``None`` for a launch cut short by the process dying.
    """

    model_config = ConfigDict(frozen=True)

    id: int
    identifier: str
    kind: RequestKind
    started_at: float
    ended_at: float | None = None
    duration: float | None = None
    success: bool | None = None
    message: str = ""


async def _wait(
    event: anyio.Event,
    deadline: float | None,
    now: Callable[[], float],
    clock: Clock,
    ready: Callable[[], None] | None = None,
) -> None:
    """Return when ``event`` is set or the clock reaches ``deadline`` (None: no deadline).

    The delay is computed just before sleeping (no await in between), so a clock moved
    while this task was waiting to run still wakes it at the right time. ``ready`` is
    called once the timer is set, when the caller is really waiting.
    """
    if deadline is None:
        if ready is not None:
            ready()
        await event.wait()
        return
    async with anyio.create_task_group() as tg:

        async def sleeper(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            task_status.started()
            # Runs on without yielding until the clock has registered the sleep.
            await clock.sleep(deadline - now())
            tg.cancel_scope.cancel()

        await tg.start(sleeper)
        if ready is not None:
            ready()
        await event.wait()
        tg.cancel_scope.cancel()


class BGTaskHandle:
    """What a handler gets for one launch (iOS ``BGTask``).

    The handler must call :meth:`set_task_completed` (BG-8). Setting
    :attr:`expiration_handler` lets it wind down when the budget runs out (BG-7). After the
    task is completed, or killed, the handler is cancelled at its next ``await``, as iOS
    suspends the app.
    """

    def __init__(
        self,
        scheduler: BGTaskScheduler,
        record_id: int,
        request: BGTaskRequest,
        *,
        started_at: float,
        started_mono: float,
        budget: float | None,
    ) -> None:
        self._scheduler = scheduler
        self._record_id = record_id
        self._request = request
        self._started_at = started_at
        self._started_mono = started_mono
        self._budget = budget
        self._expiration_handler: ExpirationHandler | None = None
        self._expired = False
        self._expire_reason = ""
        self._expire_at = math.inf
        self._kill_at = math.inf
        self._kill_message = ""
        self._success: bool | None = None
        self._message = ""
        self._ended_at: float | None = None
        self._duration: float | None = None
        self._progress: tuple[int, int] | None = None
        self._conditions_met = True
        self._done = anyio.Event()
        self._changed = anyio.Event()
        self._finished = anyio.Event()
        self._record: LaunchRecord | None = None
        self.progress_data: dict[str, Any] = {}
        """The latest progress published through a task context (see :func:`handler_for_task`)."""

    @property
    def identifier(self) -> str:
        """The launched request's identifier."""
        return self._request.identifier

    @property
    def kind(self) -> RequestKind:
        """The launched request's kind."""
        return self._request.kind

    @property
    def request(self) -> BGTaskRequest:
        """A copy of the launched request."""
        return copy_request(self._request)

    @property
    def started_at(self) -> float:
        """Clock time the launch started."""
        return self._started_at

    @property
    def budget(self) -> float | None:
        """Seconds this launch may run (``None``: continued processing, bounded by progress)."""
        return self._budget

    @property
    def expiration_handler(self) -> ExpirationHandler | None:
        """Called shortly before the time runs out (BG-7); ``None`` by default (BG-8)."""
        return self._expiration_handler

    @expiration_handler.setter
    def expiration_handler(self, handler: ExpirationHandler | None) -> None:
        self._expiration_handler = handler

    @property
    def expired(self) -> bool:
        """Whether expiration has begun (the expiration handler was due)."""
        return self._expired

    @property
    def completed(self) -> bool:
        """Whether the task was completed (by the handler, or by the system)."""
        return self._success is not None

    @property
    def success(self) -> bool | None:
        """The recorded result, once completed."""
        return self._success

    @property
    def progress(self) -> tuple[int, int] | None:
        """The last ``(completed, total)`` reported with :meth:`report_progress`."""
        return self._progress

    @property
    def record(self) -> LaunchRecord | None:
        """The history record, once the launch has ended and been recorded."""
        return self._record

    def set_task_completed(self, success: bool, *, message: str = "") -> None:
        """Tell the scheduler the work is done (BG-8). Later calls are ignored.

        Args:
            success: whether the work succeeded (recorded in the history).
            message: a note for the history.
        """
        default = "completed" if success else "completed unsuccessfully"
        self._scheduler._complete(self, bool(success), message or default)

    def report_progress(self, completed: int, total: int) -> None:
        """Report progress (required of continued-processing tasks, BG-15).

        A continued-processing task whose ``completed`` count does not grow for the
        scheduler's ``progress_timeout`` is expired.
        """
        if completed < 0 or total < 0:
            raise ValueError("progress counts must not be negative")
        before = self._progress
        self._progress = (completed, total)
        if before is None or completed > before[0]:
            self._scheduler._progressed(self)

    async def wait_finished(self) -> LaunchRecord:
        """Wait until the launch has ended and its history record is written."""
        await self._finished.wait()
        assert self._record is not None  # set before _finished
        return self._record

    def __repr__(self) -> str:
        state = "running" if self._success is None else f"success={self._success}"
        return f"BGTaskHandle({self.identifier!r}, {self.kind.value}, {state})"


class _TaskContext:
    """The :class:`~nexus_store.sync.TaskContext` a BGTask launch offers a task."""

    def __init__(self, handle: BGTaskHandle) -> None:
        self._handle = handle

    @property
    def run_attempt_count(self) -> int:
        # BGTask has no automatic retry (BG-8): every launch is a first attempt.
        return 0

    @property
    def input(self) -> Mapping[str, Any]:
        return MappingProxyType({})

    @property
    def is_stopped(self) -> bool:
        return self._handle.expired or self._handle.completed

    async def set_progress(self, progress: Mapping[str, Any]) -> None:
        if self._handle.completed:
            return
        self._handle.progress_data = dict(progress)
        done, total = progress.get("done"), progress.get("total")
        if isinstance(done, int) and isinstance(total, int):
            self._handle.report_progress(done, total)
        await anyio.lowlevel.checkpoint()


def handler_for_task(task: BackgroundSyncTask) -> BGTaskHandler:
    """Adapt a :class:`~nexus_store.sync.BackgroundSyncTask` into a BGTask handler.

    The handler runs ``task.execute`` in a cancel scope that its expiration handler
    cancels, so an expiring launch stops the run cleanly (the store's sync run puts its
    leased ops back) and reports the launch unsuccessful before the budget ends. The
    result maps to ``set_task_completed``: ``True``/``SUCCESS`` succeed; ``False``,
    ``FAILURE``, ``RETRY`` (there is no automatic retry: resubmit) and exceptions fail.
    """

    async def run(handle: BGTaskHandle) -> None:
        scope = anyio.CancelScope()
        handle.expiration_handler = scope.cancel
        outcome: bool | TaskResult | None = None
        try:
            with scope:
                outcome = await task.execute(_TaskContext(handle))
        except Exception as exc:
            logger.exception("background task %s failed", task.task_id)
            handle.set_task_completed(
                False, message=f"{task.task_id} raised {type(exc).__name__}: {exc}"
            )
            return
        if outcome is None:
            handle.set_task_completed(False, message=f"{task.task_id} stopped: time expired")
            return
        if isinstance(outcome, TaskResult):
            success = outcome.outcome is TaskOutcome.SUCCESS
            message = outcome.message or f"{task.task_id}: {outcome.outcome.value}"
            if outcome.outcome is TaskOutcome.RETRY:
                message += " (no automatic retry: resubmit to run again)"
        else:
            success = bool(outcome)
            message = f"{task.task_id}: {'success' if success else 'failure'}"
        handle.set_task_completed(success, message=message)

    return run


class _Phase(enum.Enum):
    UNSTARTED = "unstarted"
    RUNNING = "running"
    CLOSED = "closed"


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nx_bg_requests (
        identifier TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        seq INTEGER NOT NULL,
        submitted_at REAL NOT NULL,
        body TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS nx_bg_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        identifier TEXT NOT NULL,
        kind TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        duration REAL,
        success INTEGER,
        message TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS nx_bg_history_started ON nx_bg_history (started_at)",
    "CREATE TABLE IF NOT EXISTS nx_bg_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_INTERRUPTED = "interrupted: the process ended before the task finished"
_HISTORY_COLUMNS = "id, identifier, kind, started_at, ended_at, duration, success, message"


def _row_to_record(row: tuple[Any, ...]) -> LaunchRecord:
    rid, ident, kind, started, ended, duration, success, message = row
    return LaunchRecord(
        id=rid,
        identifier=ident,
        kind=RequestKind(kind),
        started_at=started,
        ended_at=ended,
        duration=duration,
        success=None if success is None else bool(success),
        message=message,
    )


class _Tables:
    """The scheduler's rows: pending requests, launch history, a little state."""

    def __init__(self, database: Database, history_limit: int) -> None:
        self.db = database
        self.history_limit = history_limit
        with database.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def load_pending(self) -> list[tuple[int, BGTaskRequest]]:
        rows = self.db.execute("SELECT seq, body FROM nx_bg_requests ORDER BY seq")
        loaded: list[tuple[int, BGTaskRequest]] = []
        for seq, body in rows:
            try:
                loaded.append((int(seq), request_from_dict(json.loads(body))))
            except (NexusStoreError, ValueError):
                logger.warning("dropping an unreadable stored BGTask request: %r", body)
        return loaded

    def save_pending(self, request: BGTaskRequest, seq: int, submitted_at: float) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO nx_bg_requests (identifier, kind, seq, submitted_at, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    request.identifier,
                    request.kind.value,
                    seq,
                    submitted_at,
                    json.dumps(request_to_dict(request)),
                ),
            )

    def delete_pending(self, identifiers: Iterable[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM nx_bg_requests WHERE identifier = ?", [(i,) for i in identifiers]
            )

    def start_launch(self, request: BGTaskRequest, started_at: float) -> int:
        """Remove the pending request and open a history row, in one transaction (BG-6)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM nx_bg_requests WHERE identifier = ?", (request.identifier,))
            cursor = conn.execute(
                "INSERT INTO nx_bg_history (identifier, kind, started_at) VALUES (?, ?, ?)",
                (request.identifier, request.kind.value, started_at),
            )
            rid = int(cursor.lastrowid or 0)
            conn.execute("DELETE FROM nx_bg_history WHERE id <= ?", (rid - self.history_limit,))
        return rid

    def finish_launch(self, record: LaunchRecord) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE nx_bg_history SET ended_at = ?, duration = ?, success = ?, message = ?"
                " WHERE id = ?",
                (record.ended_at, record.duration, record.success, record.message, record.id),
            )

    def recover_interrupted(self) -> int:
        """Close the rows of launches that were running when a process died."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE nx_bg_history SET success = 0, message = ? WHERE success IS NULL",
                (_INTERRUPTED,),
            )
            return cursor.rowcount

    def history(self, identifier: str | None, limit: int) -> list[LaunchRecord]:
        where, params = (
            ("WHERE identifier = ?", (identifier, limit)) if identifier else ("", (limit,))
        )
        rows = self.db.execute(
            f"SELECT {_HISTORY_COLUMNS} FROM nx_bg_history {where} ORDER BY id DESC LIMIT ?",
            params,
        )
        return [_row_to_record(tuple(row)) for row in rows]

    def launch_times_since(self, since: float) -> list[float]:
        rows = self.db.execute(
            "SELECT started_at FROM nx_bg_history WHERE started_at >= ? ORDER BY started_at",
            (since,),
        )
        return [float(row[0]) for row in rows]

    def get_state(self, key: str) -> str | None:
        rows = self.db.execute("SELECT value FROM nx_bg_state WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_state(self, key: str, value: str | None) -> None:
        with self.db.transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM nx_bg_state WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO nx_bg_state (key, value) VALUES (?, ?)", (key, value)
                )


class BGTaskScheduler:
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

    # -- lifecycle --------------------------------------------------------------------

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

    # -- registration and requests ----------------------------------------------------

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

    def _missing_handlers(self) -> list[str]:
        return sorted(self._declared - self._handlers.keys())

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

    # -- app and debug events -------------------------------------------------------

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

    # -- introspection ----------------------------------------------------------------

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

    # -- the loop ---------------------------------------------------------------------

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
        # A handler that returns without completing keeps the task open: the work may go
        # on elsewhere and call set_task_completed later, or the budget ends it (BG-8).

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

    def __repr__(self) -> str:
        return (
            f"BGTaskScheduler({sorted(self._declared)!r}, {self._phase.value}, "
            f"pending={len(self._pending)}, running={len(self._running)})"
        )
