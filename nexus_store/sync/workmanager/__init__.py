"""The WorkManager-like scheduler (statements WM-n) and the background service built on it.

- Requests: :class:`WorkRequest` from :class:`OneTimeWorkRequestBuilder` and
  :class:`PeriodicWorkRequestBuilder`, with :class:`Constraints`, backoff, unique-work
  policies and a :class:`SchedulingPolicy` (Android's clamps, or a desktop's).
- Decisions: pure functions of a work spec and the time (next run, after success, failure,
  retry or stop, dispatch order); persistence: work specs and run history in the store's
  own SQLite file, so a restart resumes the schedule.
- :class:`WorkManager`: runs the work; :class:`WorkInfo`, :class:`WorkQuery`,
  :class:`RunRecord` and :class:`WorkWatch` report on it.
- :class:`WorkManagerSyncService`: the :class:`~nexus_store.sync.BackgroundSyncService`
  adapter over it (desktop, server, Android).

Imports run downward only: this room uses the service's base (``sync``'s service, config
and task modules), the engine, the device room and the foundations; the service's factory
and worker import it, never the other way.
"""

from ._adapter import WorkManagerSyncService
from ._policy import Constraints, SchedulingPolicy
from ._records import RunRecord, WorkInfo, WorkQuery
from ._requests import OneTimeWorkRequestBuilder, PeriodicWorkRequestBuilder, WorkRequest
from ._running import ManagerState
from ._states import (
    BackoffPolicy,
    DispatchOrder,
    ExistingPeriodicWorkPolicy,
    ExistingWorkPolicy,
    OutOfQuotaPolicy,
    RunOutcome,
    StopReason,
    UpdateResult,
    WorkState,
)
from ._watches import WorkWatch
from ._workmanager import WorkManager

__all__ = [
    "BackoffPolicy",
    "Constraints",
    "DispatchOrder",
    "ExistingPeriodicWorkPolicy",
    "ExistingWorkPolicy",
    "ManagerState",
    "OneTimeWorkRequestBuilder",
    "OutOfQuotaPolicy",
    "PeriodicWorkRequestBuilder",
    "RunOutcome",
    "RunRecord",
    "SchedulingPolicy",
    "StopReason",
    "UpdateResult",
    "WorkInfo",
    "WorkManager",
    "WorkManagerSyncService",
    "WorkQuery",
    "WorkRequest",
    "WorkState",
    "WorkWatch",
]
