"""Work requests: what a piece of work *is*, built and validated before it is enqueued.

:class:`WorkRequest`, made by :class:`OneTimeWorkRequestBuilder` or
:class:`PeriodicWorkRequestBuilder` (androidx's builders: tags, input data, constraints,
initial delay, backoff, expedited, priority, execution time limit). Builders accept seconds
or :class:`~datetime.timedelta`; a request is immutable once built. The decisions taken on a
request once enqueued are in :mod:`._decisions`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Self

from ..._codec import encode
from ..._exceptions import InvalidWorkRequestError, WorkDataTooLargeError
from ..._priority import SyncPriority
from .._task import BackgroundSyncTask
from ._policy import (
    _NO_CONSTRAINTS,
    DEFAULT_BACKOFF_DELAY_SECONDS,
    Constraints,
    SchedulingPolicy,
    _finite_seconds,
    _seconds,
    clamp_backoff_delay,
    clamp_periodic,
)
from ._states import BackoffPolicy, OutOfQuotaPolicy

__all__ = [
    "MAX_DATA_BYTES",
    "OneTimeWorkRequestBuilder",
    "PeriodicWorkRequestBuilder",
    "WorkRequest",
    "check_data_size",
]

MAX_DATA_BYTES = 10 * 1024
"""androidx ``Data.MAX_DATA_BYTES``: the encoded size limit of input, output and progress."""


def check_data_size(data: Mapping[str, Any], what: str) -> bytes:
    """Encode ``data`` and refuse it above :data:`MAX_DATA_BYTES` (WM-20).

    Returns:
        The encoded bytes (what is stored).

    Raises:
        WorkDataTooLargeError: if the encoded data is larger than 10 KB.
        CodecError: if the data cannot be encoded.
    """
    if not isinstance(data, Mapping) or not all(isinstance(key, str) for key in data):
        raise InvalidWorkRequestError(f"{what} must be a mapping with string keys")
    blob = encode(dict(data))
    if len(blob) > MAX_DATA_BYTES:
        raise WorkDataTooLargeError(
            f"{what} data is {len(blob)} bytes encoded; the limit is {MAX_DATA_BYTES}"
        )
    return blob


@dataclasses.dataclass(frozen=True, slots=True)
class WorkRequest:
    """A validated request for work; build it with a builder, hand it to the manager.

    ``interval`` is ``None`` for one-time work. ``tags`` always holds ``worker_name``
    (WM-18). ``execution_time_limit=None`` means the manager policy's limit.
    """

    id: str
    worker_name: str
    tags: frozenset[str]
    input: dict[str, Any]
    constraints: Constraints
    initial_delay: float
    backoff_policy: BackoffPolicy
    backoff_delay: float
    backoff_on_system_interruptions: bool
    expedited: bool
    out_of_quota_policy: OutOfQuotaPolicy | None
    priority: SyncPriority
    execution_time_limit: float | None
    interval: float | None = None
    flex: float | None = None

    @property
    def is_periodic(self) -> bool:
        """Whether this is periodic work."""
        return self.interval is not None


class _WorkRequestBuilder:
    """What one-time and periodic builders share (androidx ``WorkRequest.Builder``)."""

    def __init__(self, worker: str | BackgroundSyncTask) -> None:
        name = worker if isinstance(worker, str) else worker.task_id
        if not isinstance(name, str) or not name:
            raise InvalidWorkRequestError("a work request needs a worker name")
        self._worker_name = name
        self._id: str | None = None
        self._tags: set[str] = {name}
        self._input: dict[str, Any] = {}
        self._constraints = _NO_CONSTRAINTS
        self._initial_delay = 0.0
        self._backoff_policy = BackoffPolicy.EXPONENTIAL
        self._backoff_delay = DEFAULT_BACKOFF_DELAY_SECONDS
        self._backoff_set = False
        self._backoff_on_system = False
        self._out_of_quota: OutOfQuotaPolicy | None = None
        self._priority = SyncPriority.NORMAL
        self._time_limit: float | None = None

    def set_id(self, work_id: str | uuid.UUID) -> Self:
        """Use this id instead of a fresh UUID (e.g. to update work in place)."""
        self._id = str(work_id)
        return self

    def add_tag(self, tag: str) -> Self:
        """Add a tag to query or cancel the work by (WM-18)."""
        if not isinstance(tag, str) or not tag:
            raise InvalidWorkRequestError("a tag must be a non-empty string")
        self._tags.add(tag)
        return self

    def set_input_data(self, data: Mapping[str, Any]) -> Self:
        """Data the worker reads from ``context.input``.

        Raises:
            WorkDataTooLargeError: above 10 KB encoded (WM-20).
        """
        check_data_size(data, "input")
        self._input = dict(data)
        return self

    def set_constraints(self, constraints: Constraints) -> Self:
        """Device conditions that must hold for the work to run."""
        self._constraints = constraints
        return self

    def set_initial_delay(self, delay: timedelta | float) -> Self:
        """Wait this long after enqueueing before the first run (WM-6, WM-7)."""
        self._initial_delay = _seconds(delay, "initial delay")
        return self

    def set_backoff_criteria(self, policy: BackoffPolicy, delay: timedelta | float) -> Self:
        """Backoff after a ``retry``; the delay is clamped into [10 s, 5 h] (WM-3), a
        negative one too (with the same warning).

        Raises:
            InvalidWorkRequestError: the delay is not a finite number.
        """
        self._backoff_policy = BackoffPolicy(policy)
        self._backoff_delay = clamp_backoff_delay(_finite_seconds(delay, "backoff delay"))
        self._backoff_set = True
        return self

    def set_backoff_for_system_interruptions(self) -> Self:
        """Also back off when the system stops the worker (timeout, constraint lost; WM-11)."""
        self._backoff_on_system = True
        return self

    def set_expedited(self, policy: OutOfQuotaPolicy) -> Self:
        """Run as soon as possible, within the expedited quota (WM-14)."""
        self._out_of_quota = OutOfQuotaPolicy(policy)
        return self

    def set_priority(self, priority: SyncPriority | int | str) -> Self:
        """The priority used by :attr:`~._states.DispatchOrder.PRIORITY` (ignored in FIFO order)."""
        self._priority = SyncPriority.coerce(priority)
        return self

    def set_execution_time_limit(self, limit: timedelta | float) -> Self:
        """Stop a run after this long (default: the manager policy's, 10 minutes; WM-12)."""
        seconds = _seconds(limit, "execution time limit")
        if seconds <= 0:
            raise InvalidWorkRequestError("the execution time limit must be positive")
        self._time_limit = seconds
        return self

    def _validate(self) -> None:
        constraints = self._constraints
        if self._backoff_set and constraints.requires_device_idle:
            raise InvalidWorkRequestError("Cannot set backoff criteria on an idle mode job")
        if self._out_of_quota is not None:
            if self._initial_delay > 0:
                raise InvalidWorkRequestError("Expedited jobs cannot be delayed")
            if (
                constraints.requires_charging
                or constraints.requires_battery_not_low
                or constraints.requires_device_idle
                or constraints.content_uri_triggers
            ):
                raise InvalidWorkRequestError(
                    "Expedited jobs only support network and storage constraints"
                )

    def _build(self, interval: float | None, flex: float | None) -> WorkRequest:
        self._validate()
        return WorkRequest(
            id=self._id or str(uuid.uuid4()),
            worker_name=self._worker_name,
            tags=frozenset(self._tags),
            input=dict(self._input),
            constraints=self._constraints,
            initial_delay=self._initial_delay,
            backoff_policy=self._backoff_policy,
            backoff_delay=self._backoff_delay,
            backoff_on_system_interruptions=self._backoff_on_system,
            expedited=self._out_of_quota is not None,
            out_of_quota_policy=self._out_of_quota,
            priority=self._priority,
            execution_time_limit=self._time_limit,
            interval=interval,
            flex=flex,
        )


class OneTimeWorkRequestBuilder(_WorkRequestBuilder):
    """Builds one-time work: ``OneTimeWorkRequestBuilder("cleanup").set_initial_delay(60).build()``.

    Raises (from :meth:`build`):
        InvalidWorkRequestError: expedited with a delay or with charging/battery/idle/content
            constraints (WM-14); backoff criteria with device idle (WM-15).
    """

    def build(self) -> WorkRequest:
        """The validated request."""
        return self._build(None, None)


class PeriodicWorkRequestBuilder(_WorkRequestBuilder):
    """Builds periodic work; interval and flex are clamped, not refused (WM-1, WM-2).

    Args:
        worker: the worker (or its name).
        interval: the repeat interval; raised to the policy floor (15 min by default)
            with a logged warning (a negative interval too).
        flex_interval: the window at the end of each interval in which the run may happen;
            clamped into [flex floor, interval] (a negative flex too); ``None`` means the
            whole interval (no flex window).

    Raises:
        InvalidWorkRequestError: the interval or flex is not a finite number.
        policy: the policy whose floors apply (``SchedulingPolicy.android()`` by default).
    """

    def __init__(
        self,
        worker: str | BackgroundSyncTask,
        interval: timedelta | float,
        flex_interval: timedelta | float | None = None,
        *,
        policy: SchedulingPolicy | None = None,
    ) -> None:
        super().__init__(worker)
        self._interval = _finite_seconds(interval, "interval")
        self._flex = (
            None if flex_interval is None else _finite_seconds(flex_interval, "flex interval")
        )
        self._policy = policy or _ANDROID

    def build(self) -> WorkRequest:
        """The validated, clamped request.

        Raises:
            InvalidWorkRequestError: periodic work cannot be expedited (WM-14); backoff
                criteria with device idle (WM-15).
        """
        if self._out_of_quota is not None:
            raise InvalidWorkRequestError("PeriodicWorkRequests cannot be expedited")
        interval, flex = clamp_periodic(
            self._interval,
            self._flex,
            min_interval=self._policy.min_periodic_interval.total_seconds(),
            min_flex=self._policy.min_periodic_flex.total_seconds(),
        )
        return self._build(interval, flex)


_ANDROID = SchedulingPolicy()
