"""What a sync run reports: its summary, its progress while it runs, and its event.

- :class:`SyncSummary`: the typed result of one run (pushed, failed, dead-lettered,
  conflicts, pulled, per priority, duration, why it stopped).
- :class:`SyncProgress`: done/total per priority, published after every batch and page.
- :class:`SyncEvent`: one per run (task id, success, message, timestamp, duration).

They are published on :class:`~nexus_store._broadcast.Broadcast` streams (every
subscriber sees every item, in order, as an async iterator; callbacks too), which
:class:`SyncStreams` bundles so a runner and a background service share them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ..._broadcast import Broadcast, Subscription
from ..._priority import SyncPriority
from ._transfer_progress import TransferProgress, TransferState

__all__ = [
    "Broadcast",
    "PriorityProgress",
    "PrioritySummary",
    "Subscription",
    "SyncEvent",
    "SyncPhase",
    "SyncProgress",
    "SyncStopReason",
    "SyncStreams",
    "SyncSummary",
]


class SyncStopReason(StrEnum):
    """Why a sync run stopped pushing."""

    DRAINED = "drained"
    """No op left to send in the synced collections."""
    WAITING = "waiting"
    """No op could be sent now, but some remain queued (``SyncSummary.remaining``): backing
    off after a failure, leased by another run, or held back by the device (``LOW``)."""
    BUDGET = "budget"
    """The run's time budget ran out."""
    FAILURES = "failures"
    """Too many batches in a row failed as a whole (the remote is unreachable or failing)."""
    RATE_LIMITED = "rate_limited"
    """The remote asked us to slow down: its ops went back untouched, and every request to
    it waits for its ``Retry-After`` (``SyncSummary.paused_until``)."""
    AUTH = "auth"
    """The remote refused our credentials; its ops went back untouched (no attempt
    counted) and it is paused until a usable token arrives."""
    PAUSED = "paused"
    """The remote is paused (it asked for quiet with ``Retry-After``, or kept failing):
    nothing was sent; ``SyncSummary.paused_until`` says until when."""
    OFFLINE = "offline"
    """The device reported no network; nothing was sent."""
    CANCELLED = "cancelled"
    """The run was cancelled (shutdown, expiration); leased ops went back untouched."""
    ERROR = "error"
    """The run failed locally (e.g. the database); leased ops went back untouched."""


class SyncPhase(StrEnum):
    """Where a run is."""

    PUSH = "push"
    PULL = "pull"
    DONE = "done"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PrioritySummary(_Frozen):
    """What a run did with the ops of one priority."""

    pushed: int = 0
    """Ops the remote acknowledged (accepted, or resolved as a conflict)."""
    failed: int = 0
    """Ops that failed for now and wait for a retry (backoff)."""
    dead_lettered: int = 0
    """Ops refused for good, moved to the dead-letter state with their reason."""
    conflicts: int = 0
    """Of ``pushed``: ops whose write lost to the server's copy, which was adopted locally."""


class SyncSummary(_Frozen):
    """The typed result of one sync run."""

    run_id: str
    task_id: str = "nexus-store.sync"
    started_at: datetime
    duration: float = Field(ge=0)
    """Seconds the run took (on the runner's clock)."""
    pushed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    conflicts: int = 0
    pulled: int = 0
    """Remote changes applied locally (changes skipped because of pending ops included)."""
    quarantined: int = 0
    """Pulled changes that could not be applied locally and were kept in the quarantine
    (the pull moved past them only because they are kept; see
    :meth:`~nexus_store.NexusStore.quarantined`)."""
    released: int = 0
    """Leased ops given back untouched (cancellation, batch trimming)."""
    requests: int = 0
    """Push and pull requests sent."""
    per_priority: dict[SyncPriority, PrioritySummary] = Field(default_factory=dict)
    stop_reason: SyncStopReason = SyncStopReason.DRAINED
    error: str | None = None
    """The last batch-level error, if any (for humans; never holds credentials)."""
    stale: int = 0
    """Answers not settled because the run's lease on the op had passed to another run
    (the op is that run's to settle; the server dedupes it by op id)."""
    remaining: int | None = None
    """Ops (pending or leased) left in the synced collections when the run ended
    (``None``: not counted, e.g. a cancelled run)."""
    paused_until: datetime | None = None
    """When the remote's pause ends, if the run ended with the remote paused."""
    clock_skew: float | None = None
    """Seconds this device's clock is ahead of the server's (negative: behind), when that
    is more than the server's bound; its writes are then stamped with the server's time
    until the clock is set right. ``None`` when within the bound (or not stated)."""
    uploaded: int = 0
    """Files sent (blobs to the sync server, files POSTed to endpoints); their failures
    count in ``failed`` and ``dead_lettered`` with the ops'."""
    downloaded: int = 0
    """Blobs fetched from the sync server."""
    transferred_bytes: int = 0
    """Bytes those transfers moved in this run (a resumed one counts what was left)."""

    @property
    def ok(self) -> bool:
        """True when nothing failed, nothing was dead-lettered or quarantined and the run
        was not cut short."""
        return (
            self.failed == 0
            and self.dead_lettered == 0
            and self.quarantined == 0
            and self.error is None
            and self.stop_reason
            in (SyncStopReason.DRAINED, SyncStopReason.WAITING, SyncStopReason.BUDGET)
        )

    def message(self) -> str:
        """A one-line human summary."""
        parts = [f"pushed {self.pushed}", f"pulled {self.pulled}"]
        if self.uploaded:
            parts.append(f"uploaded {self.uploaded} files")
        if self.downloaded:
            parts.append(f"downloaded {self.downloaded} files")
        if self.conflicts:
            parts.append(f"{self.conflicts} conflicts")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.dead_lettered:
            parts.append(f"{self.dead_lettered} dead-lettered")
        if self.remaining:
            parts.append(f"{self.remaining} left")
        if self.quarantined:
            parts.append(f"{self.quarantined} quarantined")
        text = ", ".join(parts) + f" in {self.duration:.2f}s ({self.stop_reason.value})"
        if self.paused_until is not None:
            text += f", remote paused until {self.paused_until:%Y-%m-%dT%H:%M:%SZ}"
        if self.error:
            text += f": {self.error}"
        if self.clock_skew is not None:
            way = "ahead of" if self.clock_skew > 0 else "behind"
            text += f"; this device's clock is {abs(self.clock_skew):.0f} s {way} the server's"
        return text


class PriorityProgress(_Frozen):
    """Done/total for one priority within a run."""

    done: int = 0
    total: int = 0
    """Eligible ops of this priority when the run started, plus any leased later."""


class SyncProgress(_Frozen):
    """A run's progress, published after each pushed batch and pulled page."""

    run_id: str
    phase: SyncPhase
    per_priority: dict[SyncPriority, PriorityProgress]
    pulled: int = 0
    transfers: tuple[TransferProgress, ...] = ()
    """The run's file transfers so far: bytes, total, rate and ETA of each."""

    @property
    def bytes_per_priority(self) -> dict[SyncPriority, PriorityProgress]:
        """Bytes done and total of the run's transfers (not those waiting), per priority."""
        out: dict[SyncPriority, PriorityProgress] = {}
        for t in self.transfers:
            if t.state is TransferState.WAITING:
                continue
            now = out.get(t.priority, PriorityProgress())
            out[t.priority] = PriorityProgress(done=now.done + t.done, total=now.total + t.total)
        return out

    @property
    def done(self) -> int:
        """Ops handled so far (acked, failed or dead-lettered)."""
        return sum(p.done for p in self.per_priority.values())

    @property
    def total(self) -> int:
        """Ops this run expects to handle."""
        return sum(p.total for p in self.per_priority.values())


class SyncEvent(_Frozen):
    """One per finished run: what a task reports to event subscribers."""

    task_id: str
    run_id: str
    success: bool
    message: str
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    """When the run finished."""
    duration: float = Field(ge=0)
    """Seconds the run took."""
    summary: SyncSummary | None = None


class SyncStreams:
    """The progress and event streams a runner publishes on (shareable with a service)."""

    def __init__(self) -> None:
        self.progress: Broadcast[SyncProgress] = Broadcast(replay_last=True)
        self.events: Broadcast[SyncEvent] = Broadcast()

    def close(self) -> None:
        """End every subscription."""
        self.progress.close()
        self.events.close()
