"""The BGTask-like scheduler (statements BG-n) and the background service built on it.

- Requests: :class:`AppRefreshRequest`, :class:`ProcessingRequest` and
  :class:`ContinuedProcessingRequest` for declared task identifiers, at most one pending
  refresh, ``earliest_begin`` as a lower bound.
- Decisions: a :class:`LaunchPolicy` (:class:`DeterministicLaunchPolicy`, or the
  :class:`OpportunisticLaunchPolicy` that weighs :class:`AppUsage`) decides when a
  request launches; persistence: pending requests and launch history in the store's file.
- :class:`BGTaskScheduler`: launches handlers with a time budget; a
  :class:`BGTaskHandle` is one launch (expiration handler, ``set_task_completed``) and a
  :class:`LaunchRecord` its history.
- :class:`BGTaskSyncService`: the :class:`~nexus_store.sync.BackgroundSyncService`
  adapter over it (iOS).

Imports run downward only: this room uses the service's base (``sync``'s service, config
and task modules), the engine, the device room and the foundations; the service's factory
imports it, never the other way.
"""

from ._adapter import BGTaskSyncService
from ._bgtask import BGTaskScheduler
from ._handle import BGTaskHandle, BGTaskHandler, LaunchRecord, handler_for_task
from ._launch import (
    AppUsage,
    DeterministicLaunchPolicy,
    LaunchContext,
    LaunchDecision,
    LaunchPolicy,
    OpportunisticLaunchPolicy,
)
from ._requests import (
    AppRefreshRequest,
    BGTaskRequest,
    ContinuedProcessingRequest,
    ProcessingRequest,
    RequestKind,
    SubmissionStrategy,
)

__all__ = [
    "AppRefreshRequest",
    "AppUsage",
    "BGTaskHandle",
    "BGTaskHandler",
    "BGTaskRequest",
    "BGTaskScheduler",
    "BGTaskSyncService",
    "ContinuedProcessingRequest",
    "DeterministicLaunchPolicy",
    "LaunchContext",
    "LaunchDecision",
    "LaunchPolicy",
    "LaunchRecord",
    "OpportunisticLaunchPolicy",
    "ProcessingRequest",
    "RequestKind",
    "SubmissionStrategy",
    "handler_for_task",
]
