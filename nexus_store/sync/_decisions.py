"""The background service's decisions as pure functions of a run's summary, the time, the queue.

What a sync run means to a scheduler (:func:`sync_outcome`), the status after it
(:func:`status_after`), how long a scheduled run may take (:func:`run_budget`), and what
the trigger loop asks for after looking at the queue (:func:`plan_requests`): ``CRITICAL``
now, ``HIGH`` after the debounce window, nothing for ``NORMAL`` and ``LOW`` (the periodic
run takes them), nothing before a paused remote's deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .._priority import SyncPriority
from ._config import BackgroundSyncStatus
from ._task import TaskResult
from .engine._progress import SyncStopReason, SyncSummary

__all__ = [
    "RequestPlan",
    "format_time",
    "plan_requests",
    "run_budget",
    "status_after",
    "sync_outcome",
]

_TRIGGERED = (SyncPriority.CRITICAL, SyncPriority.HIGH)
"""Priorities that ask for a run of their own; NORMAL and LOW wait for the periodic run."""


def sync_outcome(summary: SyncSummary) -> TaskResult:
    """What a scheduler should do after a sync run, as a task result.

    A run that left the remote paused (it asked for quiet, kept failing, or refused our
    credentials) is a failure without a scheduler retry: the service itself asks for the
    next run at the pause's deadline (a scheduler backoff would come later, or sooner,
    than the remote asked). A run that was refused or could not reach the remote otherwise
    (offline, failing, cancelled, a local error) asks for a retry (the scheduler backs
    off); ops that failed one by one wait for their own backoff in the queue, and also ask
    for a retry so they are sent again. Otherwise the run succeeded (dead-lettered ops are
    final and listed by the queue).
    """
    output = {
        "pushed": summary.pushed,
        "pulled": summary.pulled,
        "failed": summary.failed,
        "dead_lettered": summary.dead_lettered,
        "stop_reason": summary.stop_reason.value,
    }
    message = summary.message()
    if summary.stop_reason in (SyncStopReason.AUTH, SyncStopReason.PAUSED) or (
        summary.paused_until is not None
    ):
        return TaskResult.failure(output, message)
    if summary.stop_reason in (
        SyncStopReason.OFFLINE,
        SyncStopReason.FAILURES,
        SyncStopReason.RATE_LIMITED,
        SyncStopReason.CANCELLED,
        SyncStopReason.ERROR,
    ):
        return TaskResult.retry(message)
    if summary.failed:
        return TaskResult.retry(message)
    return TaskResult.success(output, message)


def status_after(summary: SyncSummary) -> BackgroundSyncStatus:
    """``COMPLETED`` when the run finished with nothing failed, else ``FAILED``."""
    return BackgroundSyncStatus.COMPLETED if summary.ok else BackgroundSyncStatus.FAILED


def run_budget(limit: timedelta | float) -> float:
    """The time budget of a scheduled run: 90 % of the execution time limit.

    The run then stops on its own and gives back what it holds before the scheduler's
    time limit stops it (WM-12), so a long backlog ends in a clean, resumable state.
    """
    seconds = limit.total_seconds() if isinstance(limit, timedelta) else float(limit)
    if not seconds > 0:
        raise ValueError("the execution time limit must be positive")
    return seconds * 0.9


@dataclass(frozen=True)
class RequestPlan:
    """What the trigger loop does after looking at the queue."""

    request: SyncPriority | None
    """Ask the adapter for a run of this priority now (``None``: nothing to ask)."""
    wake_at: float | None
    """Look again at this time (an op's backoff or lease ends), unless woken before."""


def plan_requests(
    now: float,
    next_eligible: Mapping[SyncPriority, float | None],
    *,
    stale: frozenset[SyncPriority] = frozenset(),
    paused_until: float | None = None,
    queued: bool = False,
    resumed: bool = False,
) -> RequestPlan:
    """Decide which run to ask for, from when the next op of each priority is eligible.

    Args:
        now: the current time.
        next_eligible: per priority, when its next op may be leased (at or before ``now``:
            one is eligible; ``None``: none queued); see
            :meth:`~nexus_store.PrioritySyncQueue.next_eligible_at`.
        stale: priorities whose eligible ops the last run saw and could not send, with
            nothing changed since: not asked for again (the loop guard).
        paused_until: the deadline of the remote's pause, if it has one (see
            :mod:`.engine._pause`; for refused credentials, when to look again).
        queued: whether any op (of any priority) is queued.
        resumed: whether a run was already asked for since this pause ended (a run that
            does not reach the remote leaves the pause as it was: it is resumed once).

    Returns:
        While the remote is paused: nothing, and look again at its deadline. Once the
        deadline has passed: a ``CRITICAL`` run (a run now) if anything is queued (the
        pause is the loop guard here: a run that fails again pauses the remote anew).
        Otherwise ``CRITICAL`` if one is eligible (a run drains ``HIGH`` too), else
        ``HIGH`` if one is; and the earliest future eligibility among the two, to look
        again then.
    """
    if paused_until is not None:
        if paused_until > now:
            return RequestPlan(None, paused_until if queued else None)
        if queued and not resumed:
            return RequestPlan(SyncPriority.CRITICAL, None)
    request: SyncPriority | None = None
    wake_at: float | None = None
    for priority in _TRIGGERED:
        when = next_eligible.get(priority)
        if when is None:
            continue
        if when <= now:
            if request is None and priority not in stale:
                request = priority
        else:
            wake_at = when if wake_at is None else min(wake_at, when)
    return RequestPlan(request, wake_at)


def format_time(when: float) -> str:
    """A clock time as an ISO 8601 UTC string, to the second."""
    if not math.isfinite(when):
        return "never"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
