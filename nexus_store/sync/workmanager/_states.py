"""The WorkManager-like scheduler's vocabulary: work states, stop reasons, policies, outcomes.

Enums named after androidx's (``WorkInfo.State``, ``BackoffPolicy``, ``StopReason``,
``ExistingWorkPolicy``, ...), with :class:`DispatchOrder` and :class:`RunOutcome` of our own.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = [
    "BackoffPolicy",
    "DispatchOrder",
    "ExistingPeriodicWorkPolicy",
    "ExistingWorkPolicy",
    "OutOfQuotaPolicy",
    "RunOutcome",
    "StopReason",
    "UpdateResult",
    "WorkState",
]


class WorkState(StrEnum):
    """Where a piece of work is in its life (androidx ``WorkInfo.State``)."""

    ENQUEUED = "enqueued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """SUCCEEDED, FAILED and CANCELLED are final."""
        return self in _FINISHED


_FINISHED = frozenset({WorkState.SUCCEEDED, WorkState.FAILED, WorkState.CANCELLED})
_UNFINISHED = frozenset({WorkState.ENQUEUED, WorkState.RUNNING, WorkState.BLOCKED})


class BackoffPolicy(StrEnum):
    """How the delay grows between retries (WM-4)."""

    EXPONENTIAL = "exponential"
    LINEAR = "linear"


class StopReason(IntEnum):
    """Why a running worker was stopped (androidx ``WorkInfo.STOP_REASON_*`` codes)."""

    NOT_STOPPED = -256
    UNKNOWN = -512
    FOREGROUND_SERVICE_TIMEOUT = -128
    CANCELLED_BY_APP = 1
    PREEMPT = 2
    TIMEOUT = 3
    DEVICE_STATE = 4
    CONSTRAINT_BATTERY_NOT_LOW = 5
    CONSTRAINT_CHARGING = 6
    CONSTRAINT_CONNECTIVITY = 7
    CONSTRAINT_DEVICE_IDLE = 8
    CONSTRAINT_STORAGE_NOT_LOW = 9
    QUOTA = 10
    BACKGROUND_RESTRICTION = 11
    APP_STANDBY = 12
    USER = 13
    SYSTEM_PROCESSING = 14
    ESTIMATED_APP_LAUNCH_TIME_CHANGED = 15


class ExistingWorkPolicy(StrEnum):
    """What unique one-time work does when work with the same name exists (WM-16)."""

    KEEP = "keep"
    REPLACE = "replace"
    APPEND = "append"
    APPEND_OR_REPLACE = "append_or_replace"


class ExistingPeriodicWorkPolicy(StrEnum):
    """What unique periodic work does when work with the same name exists (WM-17)."""

    KEEP = "keep"
    UPDATE = "update"
    CANCEL_AND_REENQUEUE = "cancel_and_reenqueue"


class OutOfQuotaPolicy(StrEnum):
    """What expedited work becomes when the expedited quota is used up (WM-14)."""

    RUN_AS_NON_EXPEDITED = "run_as_non_expedited"
    DROP = "drop"


class DispatchOrder(StrEnum):
    """The order in which eligible work starts (WM-21)."""

    FIFO = "fifo"
    """Strict WorkManager: by last enqueue time, then insertion order."""
    PRIORITY = "priority"
    """Expedited first, then by priority (CRITICAL first), then FIFO."""


class UpdateResult(StrEnum):
    """The answer of an in-place update (androidx ``WorkManager.UpdateResult``)."""

    NOT_APPLIED = "not_applied"
    APPLIED_IMMEDIATELY = "applied_immediately"
    APPLIED_FOR_NEXT_RUN = "applied_for_next_run"


class RunOutcome(StrEnum):
    """How one run ended, as recorded in the run history."""

    SUCCESS = "success"
    FAILURE = "failure"
    RETRY = "retry"
    STOPPED = "stopped"
    """The scheduler stopped it (constraint lost, time limit, shutdown); it runs again."""
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """The process ended during the run (found open after a restart)."""
