"""The state of one sync run, and the steps its push and pull halves share.

:class:`_Run` is the mutable state of one run (what it holds, what it counted, why it
stopped). :class:`_RunnerBase` declares the runner's state and the steps both halves
take: local work in a worker thread, never half-cancelled; pausing the remote; noting the
first successful exchange; hearing the server's clock; publishing progress.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread

from ..._backoff import RetryBackoff
from ..._clock import Clock
from ..._exceptions import RemoteError
from ..._hlc import ClockReading
from ..._priority import SyncPriority
from ..._remote import RemoteBackend, RemoteOp
from ...queue import QueuedOp
from ..device._device import DeviceStateProvider
from ._engine import EngineConfig
from ._pause import PauseReason, RemotePause, RemotePauses
from ._progress import (
    PriorityProgress,
    SyncPhase,
    SyncProgress,
    SyncStopReason,
    SyncStreams,
    SyncSummary,
)
from ._target import ClockedTarget, SyncTarget
from ._transfer_progress import TransferProgress

__all__: list[str] = []

R = TypeVar("R")

logger = logging.getLogger("nexus_store.sync")

_PAUSE_STOPS = {
    PauseReason.AUTH: SyncStopReason.AUTH,
    PauseReason.RATE_LIMITED: SyncStopReason.RATE_LIMITED,
    PauseReason.UNAVAILABLE: SyncStopReason.FAILURES,
}


@dataclass
class _Leased:
    """A leased op and what will be sent for it."""

    op: QueuedOp
    remote: RemoteOp | None
    """``None`` when the op cannot be sent (it is dead-lettered with ``problem``)."""
    size: int
    problem: str = ""
    """Why the op cannot be sent, when ``remote`` is ``None``."""
    token: int = 0
    """The fencing token of the lease that handed the op out."""

    @property
    def collection(self) -> str:
        return self.op.collection

    @property
    def item_id(self) -> str | int:
        return self.op.item_id


@dataclass
class _Run:
    """The mutable state of one run (touched from the event loop, and by the worker
    threads of the local steps the loop awaits)."""

    run_id: str
    started: float
    started_at: datetime
    allowed: frozenset[SyncPriority]
    started_wall: float = 0.0
    held: dict[str, _Leased] = field(default_factory=dict)
    """Ops leased and not yet acked, nacked or released."""
    total: dict[SyncPriority, int] = field(default_factory=dict)
    done: dict[SyncPriority, int] = field(default_factory=dict)
    pushed: dict[SyncPriority, int] = field(default_factory=lambda: defaultdict(int))
    failed: dict[SyncPriority, int] = field(default_factory=lambda: defaultdict(int))
    dead: dict[SyncPriority, int] = field(default_factory=lambda: defaultdict(int))
    conflicts: dict[SyncPriority, int] = field(default_factory=lambda: defaultdict(int))
    pulled: int = 0
    quarantined: int = 0
    released: int = 0
    requests: int = 0
    consecutive_failures: int = 0
    stop: SyncStopReason | None = None
    error: str | None = None
    phase: SyncPhase = SyncPhase.PUSH
    stale: int = 0
    remaining: int | None = None
    paused: RemotePause | None = None
    """The remote's pause (found at the start, or set by this run)."""
    exchanged: bool = False
    """Whether the remote answered a push or a pull in this run (its pause was then lifted)."""
    exhausted: bool = False
    """The last lease found fewer eligible ops than it asked for."""
    resume_due: bool = False
    """The remote answered a push and the pause and backoffs it ends are still to be
    cleared in the file (by the next settle, see ``_exchanged``)."""
    reachable: bool = False
    """Whether the remote answered a probe in this run (its pause stays until it answers a
    push or a pull: a server that answers probes but fails every push is still paused,
    with its backoff growing)."""
    revived: int = 0
    """Ops whose backoff ended when the remote first answered during the pull."""
    writer: int = 0
    """The run's id as a writer (random, positive): its pushes carry it, and its pulls
    leave out what it pushed itself (echo suppression), with a writer-aware backend."""
    transfers: dict[str, TransferProgress] = field(default_factory=dict)
    """The run's file transfers, by op id (see :mod:`._transfers`)."""
    uploaded: int = 0
    downloaded: int = 0
    transferred_bytes: int = 0


class _RunnerBase:
    """The state of a :class:`~nexus_store.sync.engine.SyncRunner` and its shared steps."""

    config: EngineConfig
    targets: list[SyncTarget]
    backend: RemoteBackend
    clock: Clock
    device: DeviceStateProvider | None
    lease_for: float
    budget: float | None
    pull: bool
    streams: SyncStreams
    task_id: str
    last_summary: SyncSummary | None
    remote_backoff: RetryBackoff
    probe_backoff: RetryBackoff
    auth_recheck: float
    _by_collection: dict[str, SyncTarget]
    _clocked: list[ClockedTarget]
    _clock_seen: ClockReading | None
    _skew: float | None
    _groups: list[list[SyncTarget]]
    _pauses: list[RemotePauses]

    def _read_pause(self, now: float) -> RemotePause | None:
        found = [p for pauses in self._pauses if (p := pauses.current(now)) is not None]
        return max(found, key=lambda p: p.until) if found else None

    async def _pause(self, run: _Run, error: RemoteError) -> None:
        """Record in the file that the remote failed: every run waits for its deadline."""

        def record() -> RemotePause:
            now = self.clock.now()
            paused = [
                pauses.pause(
                    error,
                    now=now,
                    backoff=self.remote_backoff,
                    auth_recheck=self.auth_recheck,
                    probe_backoff=self.probe_backoff,
                )
                for pauses in self._pauses
            ]
            return max(paused, key=lambda p: p.until)

        run.paused = await self._local(record)
        logger.info(
            "remote %s paused (%s) for %.1fs: %s",
            run.paused.remote,
            run.paused.reason.value,
            max(0.0, run.paused.until - self.clock.now()),
            error,
        )

    async def _probe(self, run: _Run) -> RemoteError | None:
        """Ask the remote something cheap: whether it answers at all.

        A backend with a ``probe()`` coroutine (``HttpBackend``: ``GET /health``) is asked
        that; any other is asked for one change. An answer makes the run's later decisions
        take the remote as reachable; its pause ends only when a push or a pull gets
        through (:meth:`_exchanged`).

        Returns:
            ``None`` if the remote answered, else what the probe raised.
        """
        probe = getattr(self.backend, "probe", None)
        run.requests += 1
        try:
            if callable(probe):
                await probe()
            else:
                collections = [self.targets[0].collection]
                await self.backend.pull(0, 1, collections=collections)
        except RemoteError as exc:
            logger.info("remote probe failed: %s: %s", type(exc).__name__, exc)
            return exc
        run.reachable = True
        return None

    async def _exchanged(self, run: _Run, *, defer: bool = False) -> None:
        """The remote answered: end its pause, and let ops that were backing off from
        failures before this run go now (once per run).

        ``defer``: leave that local work to the next settle of the push (one worker-thread
        hop fewer per run; :meth:`_resume_if_due` in the settle's thread does it first).
        """
        if run.exchanged:
            return
        run.exchanged = True
        run.paused = None
        if defer:
            run.resume_due = True
            return
        revived = await self._local(self._resume, run)
        if run.phase is SyncPhase.PULL:
            run.revived += revived

    def _resume(self, run: _Run) -> int:
        """End the remote's pause in the files and the backoff of ops that failed before
        the run (in a worker thread); returns how many ops may go again."""
        for pauses in self._pauses:
            pauses.clear()
        return sum(
            group[0].queue.end_backoff(failed_before=run.started_wall) for group in self._groups
        )

    def _resume_if_due(self, run: _Run) -> None:
        """:meth:`_resume`, once, when an answer deferred it (in a worker thread)."""
        if run.resume_due:
            run.resume_due = False
            self._resume(run)

    async def _local(self, fn: Callable[..., R], *args: Any) -> R:
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(functools.partial(fn, *args))
        return result  # noqa: RET504 - the shielded scope must close before returning

    def _observe_server_clock(self) -> None:
        """Let the stores' clocks observe the server's, when it stated a new reading."""
        reading = self.backend.server_clock
        if reading is None or reading is self._clock_seen:
            return
        self._clock_seen = reading
        skews = [target.observe_server_clock(reading) for target in self._clocked]
        self._skew = next((skew for skew in skews if skew is not None), None)

    def _clock_skew(self) -> float | None:
        """The skew beyond the server's bound the stores found (or, without stores that
        stamp, the backend's own reading found)."""
        if self._clocked:
            return self._skew
        reading = self.backend.server_clock
        return reading.skew if reading is not None and reading.beyond_bound else None

    def _publish_progress(self, run: _Run) -> None:
        per = {
            p: PriorityProgress(
                done=run.done.get(p, 0), total=max(run.total.get(p, 0), run.done.get(p, 0))
            )
            for p in SyncPriority
        }
        self.streams.progress.publish(
            SyncProgress(
                run_id=run.run_id,
                phase=run.phase,
                per_priority=per,
                pulled=run.pulled,
                transfers=tuple(run.transfers.values()),
            )
        )
