"""What callers see of the WorkManager-like scheduler's work: infos, queries, run records.

:class:`WorkInfo` is a snapshot of one piece of work (WM-19), :class:`WorkQuery` selects
some (by ids, tags, unique names, states), :class:`RunRecord` is one run in the history
kept in the store's file.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer

from ..._priority import SyncPriority
from ._decisions import WorkSpec, next_schedule_time
from ._policy import Constraints
from ._states import RunOutcome, StopReason, WorkState

__all__ = ["RunRecord", "WorkInfo", "WorkQuery"]


class WorkInfo(BaseModel):
    """A snapshot of one piece of work (WM-19).

    ``output`` is empty unless the work finished; ``progress`` is empty unless RUNNING;
    ``next_schedule_time`` is infinite unless ENQUEUED. Durations are in seconds.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    worker_name: str
    state: WorkState
    tags: frozenset[str]
    unique_name: str | None
    output: dict[str, Any]
    progress: dict[str, Any]
    run_attempt_count: int
    period_count: int
    generation: int
    next_schedule_time: float
    stop_reason: StopReason
    constraints: Constraints
    initial_delay: float
    interval: float | None
    flex: float | None
    expedited: bool
    priority: SyncPriority

    @field_serializer("tags")
    def _sorted_tags(self, tags: frozenset[str]) -> list[str]:
        return sorted(tags)  # stable output for logs, JSON and the CLI

    @classmethod
    def from_spec(cls, spec: WorkSpec) -> WorkInfo:
        """The snapshot of ``spec``."""
        request = spec.request
        return cls(
            id=request.id,
            worker_name=request.worker_name,
            state=spec.state,
            tags=request.tags,
            unique_name=spec.unique_name,
            output=dict(spec.output) if spec.state.is_finished else {},
            progress=dict(spec.progress) if spec.state is WorkState.RUNNING else {},
            run_attempt_count=spec.run_attempt_count,
            period_count=spec.period_count,
            generation=spec.generation,
            next_schedule_time=next_schedule_time(spec),
            stop_reason=spec.stop_reason,
            constraints=request.constraints,
            initial_delay=request.initial_delay,
            interval=request.interval,
            flex=request.flex,
            expedited=request.expedited,
            priority=request.priority,
        )

    @property
    def is_periodic(self) -> bool:
        """Whether this is periodic work."""
        return self.interval is not None


class WorkQuery(BaseModel):
    """Select work: components combine with AND, values within one component with OR (WM-18).

    An empty component does not filter; an empty query selects all work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ids: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    unique_names: frozenset[str] = frozenset()
    states: frozenset[WorkState] = frozenset()

    def matches(self, info: WorkInfo) -> bool:
        """Whether the work ``info`` describes is selected."""
        return (
            (not self.ids or info.id in self.ids)
            and (not self.tags or not self.tags.isdisjoint(info.tags))
            and (not self.unique_names or info.unique_name in self.unique_names)
            and (not self.states or info.state in self.states)
        )


class RunRecord(BaseModel):
    """One run of one piece of work, from the persisted run history."""

    model_config = ConfigDict(frozen=True)

    run_id: int
    work_id: str
    worker_name: str
    attempt: int
    """The run attempt count the worker saw (0 on the first execution)."""
    expedited: bool
    started_at: float
    ended_at: float | None
    duration: float | None
    outcome: RunOutcome | None
    """``None`` while the run is in progress."""
    stop_reason: StopReason | None
    error: str | None
    """Why a run failed (its exception, or the failure's message)."""
    message: str | None = None
    """The message of a run's result (kept for successes too)."""
