"""One sync run: lease → push → ack/nack → repeat → pull, with progress and an event.

:class:`SyncRunner` executes the decisions of :mod:`._engine` against a local side (one
or more :class:`SyncTarget`, e.g. :class:`~nexus_store.NexusStore` objects) and a
:class:`~nexus_store.backends.RemoteBackend`:

1. lease the next batch (priority, then FIFO; per-item order is the queue's rule; ``LOW``
   left out on a metered network or low battery);
2. push it; ack what was accepted (recording the server version on the local row, in the
   same transaction), adopt the server's copy on a conflict, dead-letter what was
   rejected, nack what must be retried (the queue backs off with jitter); a batch
   refused as too large is split until the bad op is alone;
3. repeat while there is eligible work, budget, and the remote answers;
4. pull the changes after each collection's stored cursor, page by page, applying them
   without overwriting items that still have pending ops (each page and its cursor in
   one transaction; the next page is already asked for while one is applied, see
   :mod:`._pull`). A run is a *writer* with a random id: with a writer-aware backend
   its pushes carry it and its pulls leave out what it pushed itself (the store has it),
   so a run never downloads its own changes back, while every change by anyone else
   still comes (echo suppression; the page's cursor moves past the skipped ones).

Every settle carries the lease's fencing token: an answer that comes after the lease
passed to another run (it expired while the push was slow) changes nothing and is counted
as ``stale`` (see :mod:`nexus_store.queue._fencing`).

The remote as a whole (see :mod:`._pause`): a run sends nothing while the remote is paused
in the file (it asked for quiet with ``Retry-After``, or kept failing). Refused
credentials and a remote asking for quiet give the batch back untouched (no attempt is
counted: the ops did nothing wrong), pause the remote and stop the run (no pull either).
The first successful exchange of a run ends the remote's pause and makes the ops that
were backing off from earlier failures eligible at once, so a healed network drains
without waiting for each op's timer.

The summary says what the queue holds: ``DRAINED`` only when no op is left in the synced
collections, ``WAITING`` (with ``remaining``) when ops are left that could not go now.

Cancellation (a time ``budget``, a cancelled task group, shutdown) can hit at any await:
the ops the run still holds are released untouched in a shielded cleanup, so nothing is
lost and nothing is acked twice (the server dedupes a batch it may have applied by op id).
Local work (SQLite) runs in worker threads, shielded, so a transaction is never left half
done by a cancellation.

The runner needs no pydantic model: payloads travel as queued (already encoded), and a
:class:`SyncTarget` only acks, records versions and applies changes. That is what lets
``nexus-store sync`` work on a database file alone (:mod:`._rawtable`).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import anyio.abc
import anyio.to_thread

from ..._backoff import RetryBackoff
from ..._clock import Clock, SystemClock
from ..._exceptions import StoreError
from ..._hlc import ClockReading
from ..._priority import SyncPriority
from ..._remote import RemoteBackend
from ...files._transfers import FileTransfers
from ..device._device import DeviceStateProvider
from ._engine import EngineConfig, allowed_priorities, is_offline
from ._pause import (
    DEFAULT_AUTH_RECHECK,
    DEFAULT_PROBE_BACKOFF,
    DEFAULT_REMOTE_BACKOFF,
    PauseReason,
    RemotePause,
    RemotePauses,
    remote_identity,
)
from ._progress import (
    Broadcast,
    PrioritySummary,
    SyncEvent,
    SyncPhase,
    SyncProgress,
    SyncStopReason,
    SyncStreams,
    SyncSummary,
)
from ._pull import _Pulling
from ._push import _Pushing
from ._run import _Run
from ._target import ClockedTarget, SyncTarget
from ._transfers import find_sides, start_transfers

logger = logging.getLogger("nexus_store.sync")

__all__ = ["SyncRunner", "SyncTarget"]

_NO_PULL_AFTER = frozenset(
    {
        SyncStopReason.OFFLINE,
        SyncStopReason.AUTH,
        SyncStopReason.FAILURES,
        SyncStopReason.RATE_LIMITED,
        SyncStopReason.PAUSED,
    }
)
"""A run that stopped pushing for these reasons does not try to pull either."""


class SyncRunner(_Pushing, _Pulling):
    """Runs sync runs of some collections against one backend.

    Args:
        targets: a store (or several) to sync; each collection once. Stores sharing a
            database file are served in one priority order.
        backend: where ops go and changes come from.
        clock: time for budgets and durations (the first target's ``clock`` attribute if
            it has one, else the system clock).
        device: reports the device state (``LOW`` waits on a metered network or low
            battery; nothing is sent while disconnected). ``None``: assume a good network.
        batch_size: most ops per push request.
        lease_for: seconds a leased batch stays reserved (a crashed run's ops come back
            after this); keep it above the backend's request timeout.
        budget: the most seconds one run may take on ``clock``; when it runs out, the run
            stops where it is and gives back what it holds.
        config: more tuning (byte limit per request, failure limit, pull page size);
            ``batch_size`` overrides its batch size.
        pull: whether to pull after pushing.
        streams: the progress/event streams to publish on (shared with a service);
            a new pair by default.
        task_id: the task id put in events.
        remote_backoff: how long the remote is paused after it failed without saying when
            to come back (full jitter, capped; default 1 s doubling up to 60 s).
        auth_recheck: seconds until a remote paused for refused credentials is looked at
            again (for schedulers; a run always tries).
    """

    def __init__(
        self,
        targets: SyncTarget | Sequence[SyncTarget],
        backend: RemoteBackend,
        *,
        clock: Clock | None = None,
        device: DeviceStateProvider | None = None,
        batch_size: int | None = None,
        lease_for: float = 120.0,
        budget: float | None = None,
        config: EngineConfig | None = None,
        pull: bool = True,
        streams: SyncStreams | None = None,
        task_id: str = "nexus-store.sync",
        remote_backoff: RetryBackoff | None = None,
        auth_recheck: float = DEFAULT_AUTH_RECHECK,
        probe_backoff: RetryBackoff | None = None,
    ) -> None:
        chosen = [targets] if isinstance(targets, SyncTarget) else list(targets)
        if not chosen:
            raise ValueError("a sync run needs at least one store")
        names = [t.collection for t in chosen]
        if len(set(names)) != len(names):
            raise ValueError(f"each collection may be synced once per run, got {names}")
        if lease_for <= 0:
            raise ValueError("lease_for must be positive")
        if budget is not None and budget <= 0:
            raise ValueError("budget must be positive (or None for no limit)")
        base = config or EngineConfig()
        self.config = (
            base if batch_size is None else dataclasses.replace(base, batch_size=batch_size)
        )
        self.targets = chosen
        self.backend = backend
        self.clock: Clock = clock or getattr(chosen[0], "clock", None) or SystemClock()
        self.device = device
        self.lease_for = float(lease_for)
        self.budget = budget
        self.pull = pull
        self.streams = streams or SyncStreams()
        self.task_id = task_id
        self.last_summary: SyncSummary | None = None
        """The summary of the last finished (or cancelled) run."""
        self._by_collection = {t.collection: t for t in chosen}
        self._clocked = [t for t in chosen if isinstance(t, ClockedTarget)]
        self._clock_seen: ClockReading | None = None
        self._skew: float | None = None
        # Collections whose queue is one object are leased together, in one order.
        groups: dict[int, list[SyncTarget]] = {}
        for target in chosen:
            groups.setdefault(id(target.queue), []).append(target)
        self._groups = list(groups.values())
        self.remote_backoff = remote_backoff or DEFAULT_REMOTE_BACKOFF()
        self.probe_backoff = probe_backoff or DEFAULT_PROBE_BACKOFF()
        self.auth_recheck = float(auth_recheck)
        identity = remote_identity(backend)
        databases = {id(t.database): t.database for t in chosen}
        self._pauses = [RemotePauses(database, identity) for database in databases.values()]

    @property
    def progress(self) -> Broadcast[SyncProgress]:
        """Progress of the runs (subscribe for an async iterator, or add a callback)."""
        return self.streams.progress

    @property
    def events(self) -> Broadcast[SyncEvent]:
        """One event per finished run (subscribe, or add a callback)."""
        return self.streams.events

    async def run(self) -> SyncSummary:
        """Run once: push while there is eligible work and budget, then pull.

        Returns:
            What the run did. A budget that runs out ends the run normally
            (``stop_reason`` ``BUDGET``).

        Raises:
            DatabaseError: the local database failed (held ops were released first).
            anyio's cancellation: when cancelled from outside; held ops go back first and
                an unsuccessful event is published.
        """
        device = self.device.current() if self.device is not None else None
        wall = self.clock.now()
        run = _Run(
            writer=secrets.randbits(62) + 1,
            run_id=uuid.uuid4().hex,
            started=self.clock.monotonic(),
            started_at=datetime.fromtimestamp(wall, UTC),
            allowed=allowed_priorities(device),
            started_wall=wall,
        )
        if is_offline(device):
            run.stop = SyncStopReason.OFFLINE
            return self._finish(run)
        # One worker-thread hop for what the run reads first: the remote's pause, and
        # whether the files hold file transfers.
        run.paused, sides = await self._local(self._read_start, wall)
        if not await self._may_send(run, wall):
            run.remaining = await self._local(self._count_remaining)
            return self._finish(run)
        try:
            async with anyio.create_task_group() as group:
                if self.budget is not None:
                    group.start_soon(self._watchdog, run, group.cancel_scope)
                files = start_transfers(self, run, group, sides)  # file ops, beside the push
                try:
                    await self._push(run, count=True)  # counts the run's work first
                    if self.pull and run.stop not in _NO_PULL_AFTER:
                        run.phase = SyncPhase.PULL
                        await self._pull(run)
                        if run.revived and run.stop is SyncStopReason.DRAINED:
                            # The pull was the first answer of the remote in this run: the
                            # ops that were waiting for it to come back go now.
                            run.phase, run.stop = SyncPhase.PUSH, None
                            await self._push(run)
                    await files.finish()
                finally:
                    group.cancel_scope.cancel()  # the watchdog is done either way
        except BaseException as exc:
            failures = [e for e in _leaves(exc) if not isinstance(e, _cancelled())]
            with anyio.CancelScope(shield=True):
                try:
                    await self._release_held(run)
                except StoreError:
                    # Their leases run out on their own; the original error matters more.
                    logger.warning("could not give back %d leased ops", len(run.held))
                if failures:
                    run.stop = SyncStopReason.ERROR
                    run.error = f"{type(failures[0]).__name__}: {failures[0]}"
                elif run.stop is None:
                    run.stop = SyncStopReason.CANCELLED
                self._finish(run, failed=True)
            if len(failures) == 1 and failures[0] is not exc:
                # Task groups wrap errors; callers expect the error itself.
                raise failures[0] from None
            raise
        with anyio.CancelScope(shield=True):
            await self._release_held(run)
            run.remaining = await self._local(self._count_remaining)
        if run.stop is SyncStopReason.DRAINED and run.remaining:
            run.stop = SyncStopReason.WAITING
        return self._finish(run)

    def _read_start(self, wall: float) -> tuple[RemotePause | None, list[FileTransfers]]:
        """The remote's pause and the files' transfer sides (in a worker thread)."""
        return self._read_pause(wall), find_sides(self.targets)

    async def _may_send(self, run: _Run, wall: float) -> bool:
        """Whether the run may send (``run.paused`` read): ``False`` (with ``run.stop``
        set) while the remote's pause lasts, or when it could not be reached (or was down)
        when last tried and a probe says it still is; it is then paused again (one small
        request, instead of a leased batch sent into an outage)."""
        if run.paused is not None and run.paused.blocks(wall):
            # The remote asked for quiet (or keeps failing): not one request before then.
            run.stop = SyncStopReason.PAUSED
            return False
        if run.paused is None or run.paused.reason is not PauseReason.UNAVAILABLE:
            return True
        error = await self._probe(run)
        if error is None:
            return True
        await self._pause(run, error)
        run.stop, run.error = SyncStopReason.FAILURES, f"{type(error).__name__}: {error}"
        return False

    def _count_remaining(self) -> int:
        files = {id(t.database): t.queue for t in self.targets}  # transfer ops, per file
        return sum(target.queue.count_live(target.collection) for target in self.targets) + sum(
            queue.count_live("nx_files") for queue in files.values()
        )

    async def _watchdog(self, run: _Run, scope: anyio.CancelScope) -> None:
        assert self.budget is not None
        await self.clock.sleep(self.budget)
        run.stop = SyncStopReason.BUDGET
        scope.cancel()

    def _finish(self, run: _Run, *, failed: bool = False) -> SyncSummary:
        duration = max(0.0, self.clock.monotonic() - run.started)
        per = {
            p: PrioritySummary(
                pushed=run.pushed[p],
                failed=run.failed[p],
                dead_lettered=run.dead[p],
                conflicts=run.conflicts[p],
            )
            for p in SyncPriority
        }
        summary = SyncSummary(
            run_id=run.run_id,
            task_id=self.task_id,
            started_at=run.started_at,
            duration=duration,
            pushed=sum(run.pushed.values()),
            failed=sum(run.failed.values()),
            dead_lettered=sum(run.dead.values()),
            conflicts=sum(run.conflicts.values()),
            pulled=run.pulled,
            quarantined=run.quarantined,
            released=run.released,
            requests=run.requests,
            per_priority=per,
            stop_reason=run.stop or SyncStopReason.DRAINED,
            error=run.error,
            stale=run.stale,
            remaining=run.remaining,
            paused_until=(
                None
                if run.paused is None or run.paused.until <= self.clock.now()
                else datetime.fromtimestamp(run.paused.until, UTC)
            ),
            clock_skew=self._clock_skew(),
            uploaded=run.uploaded,
            downloaded=run.downloaded,
            transferred_bytes=run.transferred_bytes,
        )
        self.last_summary = summary
        run.phase = SyncPhase.DONE
        self._publish_progress(run)
        self.streams.events.publish(
            SyncEvent(
                task_id=self.task_id,
                run_id=run.run_id,
                success=summary.ok and not failed,
                message=summary.message(),
                timestamp=datetime.fromtimestamp(self.clock.now(), UTC),
                duration=duration,
                summary=summary,
            )
        )
        return summary


def _cancelled() -> type[BaseException]:
    return anyio.get_cancelled_exc_class()


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
