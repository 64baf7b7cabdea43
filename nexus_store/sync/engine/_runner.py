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
   one transaction).

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
import functools
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.abc
import anyio.to_thread
from pydantic import ValidationError

from ... import _codec
from ..._backoff import RetryBackoff
from ..._clock import Clock, SystemClock
from ..._database import Database
from ..._exceptions import AuthError, CodecError, ErrorKind, RemoteError, StoreError
from ..._gc import collector_paused
from ..._hlc import ClockReading
from ..._priority import SyncPriority
from ..._remote import Change, RemoteBackend, RemoteOp, is_plain_op
from ..._trusted import trusted_builder
from ...queue import OpKind, OpState, PrioritySyncQueue, QueuedOp
from ..device._device import DeviceStateProvider
from ._engine import (
    Ack,
    BatchErrorAction,
    EngineConfig,
    Failure,
    ResultPlan,
    allowed_priorities,
    budget_left,
    fit_batch,
    hold_back,
    is_offline,
    item_key,
    plan_batch_error,
    plan_results,
    split_batch,
)
from ._pause import (
    DEFAULT_AUTH_RECHECK,
    DEFAULT_REMOTE_BACKOFF,
    PauseReason,
    RemotePause,
    RemotePauses,
    remote_identity,
)
from ._progress import (
    Broadcast,
    PriorityProgress,
    PrioritySummary,
    SyncEvent,
    SyncPhase,
    SyncProgress,
    SyncStopReason,
    SyncStreams,
    SyncSummary,
)

__all__ = ["SyncRunner", "SyncTarget"]

R = TypeVar("R")

logger = logging.getLogger("nexus_store.sync")

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
_PAUSE_STOPS = {
    PauseReason.AUTH: SyncStopReason.AUTH,
    PauseReason.RATE_LIMITED: SyncStopReason.RATE_LIMITED,
    PauseReason.UNAVAILABLE: SyncStopReason.FAILURES,
}


@runtime_checkable
class SyncTarget(Protocol):
    """The local side of one collection, as a sync run sees it.

    :class:`~nexus_store.NexusStore` is one; :class:`~nexus_store.sync.RawCollection`
    is one that needs no model (for the command line and workers).
    """

    @property
    def collection(self) -> str:
        """The collection (table) name; also the name its ops are queued under."""
        ...

    @property
    def queue(self) -> PrioritySyncQueue:
        """The queue holding this collection's ops."""
        ...

    @property
    def database(self) -> Database:
        """The database of the table and the queue (acks commit in one transaction)."""
        ...

    def apply_ack(self, item_id: str | int, version: int) -> bool:
        """Record the server version of an item whose op was acknowledged."""
        ...

    def apply_acks(self, acks: Iterable[tuple[str | int, int]]) -> int:
        """:meth:`apply_ack` for many ``(item_id, version)`` pairs at once."""
        ...

    def apply_remote_changes(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> list[Change]:
        """Apply remote changes, never over an item with a pending op; return those applied."""
        ...

    def pull_cursor(self) -> int:
        """The stored pull cursor of this collection."""
        ...

    def set_pull_cursor(self, cursor: int) -> None:
        """Store the pull cursor (joining the caller's transaction)."""
        ...


@runtime_checkable
class ClockedTarget(Protocol):
    """A sync target with a clock that observes the server's (a store)."""

    def observe_server_clock(self, reading: ClockReading) -> float | None:
        """Observe the server's clock; return the local clock's skew if beyond the bound."""
        ...


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
    """The mutable state of one run (touched only from the event loop)."""

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
    """Whether the remote answered once in this run (its pause was then lifted)."""
    revived: int = 0
    """Ops whose backoff ended when the remote first answered during the pull."""


class _Settler:
    """Settles result plans in order, each in a worker thread, behind the pushes."""

    def __init__(self, runner: SyncRunner, run: _Run, group: anyio.abc.TaskGroup) -> None:
        self._runner = runner
        self._run = run
        self._group = group
        self._last: anyio.Event | None = None

    def submit(self, plan: ResultPlan) -> None:
        """Settle ``plan`` after every plan submitted before it."""
        previous, done = self._last, anyio.Event()
        self._last = done
        self._group.start_soon(self._settle_after, previous, plan, done)

    async def _settle_after(
        self, previous: anyio.Event | None, plan: ResultPlan, done: anyio.Event
    ) -> None:
        if previous is not None:
            await previous.wait()
        await self._runner._settle(self._run, plan)
        done.set()
        self._runner._publish_progress(self._run)

    async def wait(self) -> None:
        """Wait until every submitted plan is settled."""
        if self._last is not None:
            await self._last.wait()


class SyncRunner:
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

    # -- the run ------------------------------------------------------------------------------

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
            run_id=uuid.uuid4().hex,
            started=self.clock.monotonic(),
            started_at=datetime.fromtimestamp(wall, UTC),
            allowed=allowed_priorities(device),
            started_wall=wall,
        )
        if is_offline(device):
            run.stop = SyncStopReason.OFFLINE
            return self._finish(run)
        run.paused = await self._local(self._read_pause, wall)
        if run.paused is not None and run.paused.blocks(wall):
            # The remote asked for quiet (or keeps failing): not one request before then.
            run.stop = SyncStopReason.PAUSED
            run.remaining = await self._local(self._count_remaining)
            return self._finish(run)
        try:
            async with anyio.create_task_group() as group:
                if self.budget is not None:
                    group.start_soon(self._watchdog, run, group.cancel_scope)
                try:
                    await self._count_work(run)
                    await self._push(run)
                    if self.pull and run.stop not in _NO_PULL_AFTER:
                        run.phase = SyncPhase.PULL
                        await self._pull(run)
                        if run.revived and run.stop is SyncStopReason.DRAINED:
                            # The pull was the first answer of the remote in this run: the
                            # ops that were waiting for it to come back go now.
                            run.phase, run.stop = SyncPhase.PUSH, None
                            await self._push(run)
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

    def _read_pause(self, now: float) -> RemotePause | None:
        found = [p for pauses in self._pauses if (p := pauses.current(now)) is not None]
        return max(found, key=lambda p: p.until) if found else None

    def _count_remaining(self) -> int:
        return sum(target.queue.count_live(target.collection) for target in self.targets)

    async def _pause(self, run: _Run, error: RemoteError) -> None:
        """Record in the file that the remote failed: every run waits for its deadline."""

        def record() -> RemotePause:
            now = self.clock.now()
            paused = [
                pauses.pause(
                    error, now=now, backoff=self.remote_backoff, auth_recheck=self.auth_recheck
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

    async def _exchanged(self, run: _Run) -> None:
        """The remote answered: end its pause, and let ops that were backing off from
        failures before this run go now (once per run)."""
        if run.exchanged:
            return
        run.exchanged = True

        def resume() -> int:
            for pauses in self._pauses:
                pauses.clear()
            return sum(
                group[0].queue.end_backoff(failed_before=run.started_wall) for group in self._groups
            )

        revived = await self._local(resume)
        if run.phase is SyncPhase.PULL:
            run.revived += revived
        run.paused = None

    async def _watchdog(self, run: _Run, scope: anyio.CancelScope) -> None:
        assert self.budget is not None
        await self.clock.sleep(self.budget)
        run.stop = SyncStopReason.BUDGET
        scope.cancel()

    # -- local work, off the event loop and never half-cancelled --------------------------------

    async def _local(self, fn: Callable[..., R], *args: Any) -> R:
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(functools.partial(fn, *args))
        return result  # noqa: RET504 - the shielded scope must close before returning

    async def _count_work(self, run: _Run) -> None:
        def count() -> dict[SyncPriority, int]:
            totals: dict[SyncPriority, int] = dict.fromkeys(SyncPriority, 0)
            for target in self.targets:
                stats = target.queue.stats(target.collection)
                for priority in run.allowed:
                    totals[priority] += stats.count(priority, OpState.PENDING) + stats.count(
                        priority, OpState.LEASED
                    )
            return totals

        run.total = await self._local(count)
        run.done = dict.fromkeys(SyncPriority, 0)
        self._publish_progress(run)

    # -- push ---------------------------------------------------------------------------------

    async def _push(self, run: _Run) -> None:
        """Push batch after batch, keeping the local work off the critical path.

        Pushes go one at a time, in lease order (so the server sees priority order), but
        while batch *k* is on the wire the next batch is leased and batch *k - 1*'s results
        are settled, in worker threads. Per-item order does not depend on this: the queue
        never hands out an op while an earlier op of its item is leased.
        """
        async with anyio.create_task_group() as group:
            settler = _Settler(self, run, group)
            batch = await self._lease(run)
            while True:
                left = budget_left(run.started, self.clock.monotonic(), self.budget)
                if run.stop is None and left is not None and left <= 0:
                    run.stop = SyncStopReason.BUDGET
                if run.stop is not None:
                    await self._release(run, batch)
                    break
                if not batch:
                    # Acks still being settled may unblock more ops: look once more.
                    await settler.wait()
                    batch = await self._lease(run)
                    if not batch:
                        run.stop = SyncStopReason.DRAINED
                        break
                self._count_batch(run)
                ahead: list[list[_Leased]] = []
                async with anyio.create_task_group() as prefetch:
                    prefetch.start_soon(self._lease_into, run, ahead)
                    await self._push_batch(run, batch, settler)
                batch = ahead[0]
            await settler.wait()

    async def _lease(self, run: _Run) -> list[_Leased]:
        with anyio.CancelScope(shield=True):
            batch = await anyio.to_thread.run_sync(self._lease_batch, run.allowed)
            for leased in batch:
                run.held[leased.op.op_id] = leased
        return batch

    async def _lease_into(self, run: _Run, out: list[list[_Leased]]) -> None:
        out.append(await self._lease(run))

    def _count_batch(self, run: _Run) -> None:
        # Ops unblocked during the run (or raised in priority) join the total.
        held = Counter(x.op.priority for x in run.held.values())
        for priority, count in held.items():
            run.total[priority] = max(run.total.get(priority, 0), run.done[priority] + count)

    @collector_paused()
    def _lease_batch(self, allowed: frozenset[SyncPriority]) -> list[_Leased]:
        """Lease the next batch (in a worker thread), trimmed to the byte budget."""
        size = self.config.batch_size
        ops: list[tuple[QueuedOp, int]] = []
        if len(self._groups) == 1:
            group = self._groups[0]
            names = [t.collection for t in group]
            batch = group[0].queue.lease(
                size, self.lease_for, collections=names, priorities=sorted(allowed)
            )
            ops = [(op, batch.token) for op in batch]
        else:
            # Several queues: keep one priority order across them.
            for priority in sorted(allowed):
                for group in self._groups:
                    if len(ops) >= size:
                        break
                    batch = group[0].queue.lease(
                        size - len(ops),
                        self.lease_for,
                        collections=[t.collection for t in group],
                        priorities=[priority],
                    )
                    ops += [(op, batch.token) for op in batch]
        keep = fit_batch([len(op.payload or b"") for op, _ in ops], self.config.max_batch_bytes)
        if keep < len(ops):
            self._release_ops(ops[keep:])
            ops = ops[:keep]
        return [_prepare(op, token) for op, token in ops]

    def _release_ops(self, ops: Sequence[tuple[QueuedOp, int]]) -> int:
        by_lease: dict[tuple[int, int], tuple[PrioritySyncQueue, list[str]]] = {}
        for op, token in ops:
            queue = self._by_collection[op.collection].queue
            by_lease.setdefault((id(queue), token), (queue, []))[1].append(op.op_id)
        return sum(queue.release(ids, token=token) for (_, token), (queue, ids) in by_lease.items())

    async def _release(self, run: _Run, leased: Sequence[_Leased]) -> None:
        if not leased:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._release_ops, [(x.op, x.token) for x in leased])
            for x in leased:
                run.held.pop(x.op.op_id, None)
            run.released += len(leased)

    async def _release_held(self, run: _Run) -> None:
        await self._release(run, list(run.held.values()))

    async def _push_batch(self, run: _Run, batch: list[_Leased], settler: _Settler) -> None:
        parts: list[list[_Leased]] = [batch]
        blocked: set[tuple[str, str]] = set()
        while parts:
            part, held_back = hold_back(parts.pop(0), blocked)
            await self._release(run, held_back)
            unsendable = [x for x in part if x.remote is None]
            if unsendable:
                settler.submit(
                    ResultPlan(
                        (),
                        tuple(
                            Failure(x.op.op_id, x.problem, ErrorKind.PERMANENT) for x in unsendable
                        ),
                    )
                )
                part = [x for x in part if x.remote is not None]
            if not part:
                continue
            remote = [x.remote for x in part if x.remote is not None]
            run.requests += 1
            try:
                result = await self.backend.push(remote)
            except RemoteError as exc:
                plan = plan_batch_error(
                    exc,
                    batch_len=len(part),
                    consecutive_failures=run.consecutive_failures,
                    max_consecutive_failures=self.config.max_consecutive_failures,
                )
                if plan.action is BatchErrorAction.SPLIT:
                    first, second = split_batch(part)
                    parts[:0] = [first, second]
                    continue
                run.error = plan.reason
                if plan.action is BatchErrorAction.RELEASE:
                    await self._release(run, part)
                else:
                    whole = tuple(
                        Failure(x.op.op_id, plan.reason, plan.kind, plan.retry_after) for x in part
                    )
                    settler.submit(ResultPlan((), whole))
                blocked.update(item_key(x) for x in part)
                if plan.counts_as_failure:
                    run.consecutive_failures += 1
                if plan.pause:
                    await self._pause(run, exc)
                if plan.stop is not None:
                    run.stop = plan.stop
                    await self._release(run, [x for rest in parts for x in rest])
                    return
                continue
            run.consecutive_failures = 0
            await self._exchanged(run)
            self._observe_server_clock()
            with collector_paused():
                decided = plan_results([x.op.op_id for x in part], result)
            settler.submit(decided)
            failed_ids = {f.op_id for f in decided.failures}
            blocked.update(item_key(x) for x in part if x.op.op_id in failed_ids)

    async def _settle(self, run: _Run, plan: ResultPlan) -> None:
        """Apply a result plan to the queue and tables (shielded), then count it."""
        held = run.held
        acks = [(held[a.op_id], a) for a in plan.acks if a.op_id in held]
        failures = [(held[f.op_id], f) for f in plan.failures if f.op_id in held]
        with anyio.CancelScope(shield=True):
            stale = await anyio.to_thread.run_sync(self._settle_locally, acks, failures)
            if stale:
                # Our lease on these passed to another run (it expired while we pushed):
                # theirs to settle; the server answers them again by op id.
                logger.warning(
                    "%d answers came after their lease passed on: not settled", len(stale)
                )
                run.stale += len(stale)
                for op_id in stale:
                    held.pop(op_id, None)
                acks = [(x, a) for x, a in acks if a.op_id not in stale]
                failures = [(x, f) for x, f in failures if f.op_id not in stale]
            for leased, ack in acks:
                held.pop(leased.op.op_id, None)
                priority = leased.op.priority
                run.pushed[priority] += 1
                run.done[priority] += 1
                if ack.conflict:
                    run.conflicts[priority] += 1
            for leased, failure in failures:
                held.pop(leased.op.op_id, None)
                priority = leased.op.priority
                run.done[priority] += 1
                # The queue dead-letters permanent errors (and ops out of attempts).
                dead = failure.kind is ErrorKind.PERMANENT or (
                    failure.kind is not ErrorKind.AUTH
                    and leased.op.attempts + 1
                    >= self._by_collection[leased.op.collection].queue.max_attempts
                )
                (run.dead if dead else run.failed)[priority] += 1

    @collector_paused()
    def _settle_locally(
        self, acks: list[tuple[_Leased, Ack]], failures: list[tuple[_Leased, Failure]]
    ) -> set[str]:
        """Settle in the database; returns the op ids refused as stale (see _fencing)."""
        stale: set[str] = set()
        by_lease: dict[tuple[str, int], list[tuple[_Leased, Ack]]] = defaultdict(list)
        for leased, ack in acks:
            by_lease[leased.op.collection, leased.token].append((leased, ack))
        for (collection, token), leased_acks in by_lease.items():
            items = leased_acks
            target = self._by_collection[collection]
            # Conflicts leave the next op of the item on its old base version, so the
            # server's conflict rule decides about it too.
            versions = {
                a.op_id: a.version for _, a in items if a.version is not None and not a.conflict
            }
            # Not durable: a power loss can only undo acks, and a re-sent op is answered
            # again by op id (see PrioritySyncQueue.ack).
            with target.database.transaction(durable=False):
                settled = target.queue.ack(
                    [a.op_id for _, a in items], versions=versions, token=token
                )
                if settled.stale:
                    stale.update(settled.stale)
                    items = [(x, a) for x, a in items if a.op_id not in stale]
                adopted = [ack.adopt for _, ack in items if ack.adopt is not None]
                if adopted:
                    target.apply_remote_changes(adopted)
                target.apply_acks(
                    (leased.op.item_id, ack.version)
                    for leased, ack in items
                    if ack.version is not None and not ack.conflict
                )
        grouped: dict[tuple[str, int, ErrorKind, str, float | None], list[str]] = defaultdict(list)
        for leased, failure in failures:
            key = (
                leased.op.collection,
                leased.token,
                failure.kind,
                failure.reason,
                failure.retry_after,
            )
            grouped[key].append(failure.op_id)
        for (collection, token, kind, reason, retry_after), ids in grouped.items():
            queue = self._by_collection[collection].queue
            stale.update(
                queue.nack(ids, reason, kind=kind, retry_after=retry_after, token=token).stale
            )
        return stale

    # -- pull ---------------------------------------------------------------------------------

    async def _pull(self, run: _Run) -> None:
        page = self.config.pull_page
        for target in self.targets:
            retry = getattr(target, "retry_quarantined", None)
            if retry is not None:
                # Changes kept under another model (or migrations) may fit now.
                run.pulled += await self._local(retry)
            cursor = await self._local(target.pull_cursor)
            # Bounded: every page must move the cursor forward.
            while True:
                run.requests += 1
                try:
                    changes = await self.backend.pull(cursor, page, collections=[target.collection])
                except RemoteError as exc:
                    run.error = f"pull: {type(exc).__name__}: {exc}"
                    if isinstance(exc, AuthError) or exc.retry_after is not None:
                        await self._pause(run, exc)
                        assert run.paused is not None
                        run.stop = _PAUSE_STOPS[run.paused.reason]
                    return
                await self._exchanged(run)
                self._observe_server_clock()
                applied, quarantined = await self._local(
                    _apply_page, target, changes.changes, max(cursor, changes.cursor)
                )
                run.pulled += applied
                run.quarantined += quarantined
                self._publish_progress(run)
                if not changes.has_more or changes.cursor <= cursor:
                    break
                cursor = changes.cursor

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

    # -- reporting ----------------------------------------------------------------------------

    def _publish_progress(self, run: _Run) -> None:
        per = {
            p: PriorityProgress(
                done=run.done.get(p, 0), total=max(run.total.get(p, 0), run.done.get(p, 0))
            )
            for p in SyncPriority
        }
        self.streams.progress.publish(
            SyncProgress(run_id=run.run_id, phase=run.phase, per_priority=per, pulled=run.pulled)
        )

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


def _prepare(op: QueuedOp, token: int) -> _Leased:
    """Build the wire op of a queued op (in the lease thread: decoding is CPU work)."""
    size = len(op.payload or b"")
    data: dict[str, Any] | None = None
    if op.kind is OpKind.UPSERT:
        try:
            decoded = _codec.decode(op.payload or b"")
        except CodecError:
            return _Leased(op, None, size, "the queued payload cannot be decoded", token)
        if not isinstance(decoded, dict):
            return _Leased(op, None, size, "the queued payload is not a record (a map)", token)
        data = decoded
    remote = _wire_op(op, data)
    if remote is not None:
        return _Leased(op, remote, size, token=token)
    try:
        remote = RemoteOp(
            op_id=op.op_id,
            collection=op.collection,
            item_id=op.item_id,
            kind=op.kind.value,
            data=data,
            base_version=op.base_version,
            hlc=op.hlc,
            schema_version=op.schema_version,
        )
    except ValidationError as exc:
        # Written by another producer with values the wire cannot carry: a poison op.
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]
        )
        return _Leased(op, None, size, f"the op cannot be sent: {problems}", token)
    return _Leased(op, remote, size, token=token)


_remote_op = trusted_builder(
    RemoteOp,
    {
        "op_id": "o",
        "collection": "c",
        "item_id": 1,
        "kind": "upsert",
        "data": {"a": 1},
        "base_version": 0,
        "hlc": "h",
        "schema_version": 1,
    },
)


def _wire_op(op: QueuedOp, data: dict[str, Any] | None) -> RemoteOp | None:
    """The wire op, built without validation when its values need none (what a store
    queues); ``None``: validate it (and learn why it cannot be sent)."""
    kind = op.kind.value
    fields = (op.op_id, op.collection, op.item_id, kind, data, op.base_version, op.hlc)
    if not is_plain_op(*fields, op.schema_version):
        return None
    return _remote_op(
        {
            "op_id": op.op_id,
            "collection": op.collection,
            "item_id": op.item_id,
            "kind": kind,
            "data": data,
            "base_version": op.base_version,
            "hlc": op.hlc,
            "schema_version": op.schema_version,
        }
    )


def _apply_page(target: SyncTarget, changes: Sequence[Change], cursor: int) -> tuple[int, int]:
    """Apply one pulled page and store its cursor in one transaction; return how many
    changes were applied and how many quarantined.

    The cursor moves past a change that could not be applied only because the target kept
    it (its ``apply_pulled`` quarantines such changes in this same transaction). A target
    without ``apply_pulled`` (one written before the quarantine) is applied as before.
    """
    apply_pulled = getattr(target, "apply_pulled", None)
    with target.database.transaction():
        if apply_pulled is not None:
            applied, quarantined = apply_pulled(changes)
        else:
            applied, quarantined = target.apply_remote_changes(changes), 0
        target.set_pull_cursor(cursor)
    return len(applied), quarantined
