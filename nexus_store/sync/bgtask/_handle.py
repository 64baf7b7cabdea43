"""One launch of a BGTask-like task: the handle its handler gets, and its record.

A :class:`BGTaskHandle` carries the request, the budget, the expiration handler and
``set_task_completed`` (BG-7, BG-8); a :class:`LaunchRecord` is the launch as the history
keeps it. :func:`handler_for_task` runs a :class:`~nexus_store.sync.BackgroundSyncTask`
as a handler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict

from ..._clock import Clock
from .._task import BackgroundSyncTask, TaskOutcome, TaskResult
from ._requests import BGTaskRequest, RequestKind, copy_request

if TYPE_CHECKING:
    from ._launching import _Launching

__all__ = ["BGTaskHandle", "BGTaskHandler", "LaunchRecord", "handler_for_task"]

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
        scheduler: _Launching,
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
