"""The push half of a sync run: lease batches, send them, settle the answers in order.

Batches are leased per priority (``LOW`` left out on a metered network or low battery),
prepared for the wire (an op that cannot be sent is dead-lettered with the reason), pushed,
and their answers settled behind the pushes, in order, each in a worker thread: acks with
the server's version, conflicts by the resolver, rejections dead-lettered, failures
backing off. A batch refused as too large is split until the bad op is alone.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from pydantic import ValidationError

from ... import _codec
from ..._exceptions import CodecError, ErrorKind, RemoteError
from ..._gc import collector_paused
from ..._priority import SyncPriority
from ..._remote import PushResult, RemoteOp, is_plain_op
from ..._trusted import trusted_builder
from ...queue import OpKind, OpState, PrioritySyncQueue, QueuedOp
from ._engine import (
    Ack,
    BatchErrorAction,
    BatchErrorPlan,
    Failure,
    ResultPlan,
    budget_left,
    fit_batch,
    hold_back,
    item_key,
    plan_batch_error,
    plan_results,
    split_batch,
    split_depth,
)
from ._progress import SyncStopReason
from ._run import _Leased, _Run, _RunnerBase

logger = logging.getLogger("nexus_store.sync")

__all__: list[str] = []

_CHUNK = 128
"""The most ops one local write transaction of a run leases or settles. A transaction holds
the file's write lock, so an app saving beside a run (or a worker) waits for at most one
such chunk (about a millisecond), not a whole batch."""


_WINDOW = 2
"""The most push requests of one run on the wire at once (once the remote answered)."""

_BACKLOG = 2
"""The most answered batches of one run still to be settled before it sends another: the
ops a run holds stay bounded (and with them its memory, and the leased rows a lease skips
over) when settling falls behind the wire."""


async def _drain_window(window: anyio.Semaphore) -> None:
    """Wait until no push of the window is in flight."""
    for _ in range(_WINDOW):
        await window.acquire()
    for _ in range(_WINDOW):
        window.release()


class _Settler:
    """Settles result plans in order, each in a worker thread, behind the pushes."""

    def __init__(self, runner: _Pushing, run: _Run, group: anyio.abc.TaskGroup) -> None:
        self._runner = runner
        self._run = run
        self._group = group
        self._last: anyio.Event | None = None
        self._unsettled: deque[anyio.Event] = deque()

    def submit(self, plan: ResultPlan) -> None:
        """Settle ``plan`` after every plan submitted before it."""
        previous, done = self._last, anyio.Event()
        self._last = done
        self._unsettled.append(done)
        self._group.start_soon(self._settle_after, previous, plan, done)

    async def keep_up(self, most: int) -> None:
        """Wait until at most ``most`` submitted plans are still to be settled (they are
        settled in order)."""
        unsettled = self._unsettled
        while unsettled and (unsettled[0].is_set() or len(unsettled) > most):
            await unsettled[0].wait()
            unsettled.popleft()

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


class _Pushing(_RunnerBase):
    """A sync run's push: leasing, sending, settling and releasing ops."""

    # -- push ---------------------------------------------------------------------------------

    async def _push(self, run: _Run, *, count: bool = False) -> None:
        """Push batch after batch, keeping the local work off the critical path.

        While batch *k* is on the wire the next batch is leased and earlier batches' results
        are settled, in worker threads. Once the remote has answered in this run (and as
        long as no batch failed since), up to :data:`_WINDOW` batches of one priority are
        on the wire at once, so the server is not idle while the client prepares or
        settles; before that, one at a time (a remote that refuses the first batch gets
        one request). A batch of another priority, or of several, waits until every batch
        before it was answered: the server applies priorities in order; within one
        priority, batches in flight together may be applied in either order. Per-item order does not
        depend on any of this: the queue never hands out an op while an earlier op of its
        item is leased, so two batches in flight never hold ops of the same item.

        ``count``: count the run's work (its progress totals) in the first lease's thread.
        A lease that found fewer ops than it asked for is not followed by another while its
        batch is on the wire (it would find nothing): the look after the window drained
        takes in whatever became eligible meanwhile.
        """
        window = anyio.Semaphore(_WINDOW)
        flying: set[SyncPriority] = set()  # the priority of the batches that may be in flight
        sent = False  # whether a batch went since the push began
        async with anyio.create_task_group() as group:
            settler = _Settler(self, run, group)
            batch = await self._lease(run, count=count)
            while True:
                left = budget_left(run.started, self.clock.monotonic(), self.budget)
                if run.stop is None and left is not None and left <= 0:
                    run.stop = SyncStopReason.BUDGET
                if run.stop is not None:
                    await self._release(run, batch)
                    break
                if not batch and not sent:
                    # Nothing was eligible, and nothing went since: no second look.
                    run.stop = SyncStopReason.DRAINED
                    break
                if not batch:
                    # Pushes in flight and acks still being settled may unblock more ops
                    # (or stop the run): look once more when they are done.
                    await _drain_window(window)
                    await settler.wait()
                    if run.stop is not None:
                        continue
                    batch = await self._lease(run)
                    if not batch:
                        run.stop = SyncStopReason.DRAINED
                        break
                self._count_batch(run)
                level = {x.op.priority for x in batch}
                alongside = run.exchanged and not run.consecutive_failures and len(level) == 1
                if not alongside or level != flying:
                    # Another priority: the batches before it must have arrived first.
                    await _drain_window(window)
                await settler.keep_up(_BACKLOG)
                await window.acquire()
                if run.stop is not None:
                    window.release()
                    continue  # released above, on the next round
                flying = level
                sent = True
                if alongside:
                    group.start_soon(self._push_in_window, run, batch, settler, window)
                    batch = await self._lease_ahead(run)
                else:
                    batch = await self._push_leasing_ahead(run, batch, settler, window)
            await _drain_window(window)
            await settler.wait()

    async def _lease_ahead(self, run: _Run) -> list[_Leased]:
        """The next batch, leased while the last is on the wire; none when the last lease
        found the queue without more (the look after the window drained takes in what
        became eligible since)."""
        return [] if run.exhausted else await self._lease(run)

    async def _push_leasing_ahead(
        self, run: _Run, batch: list[_Leased], settler: _Settler, window: anyio.Semaphore
    ) -> list[_Leased]:
        """Push ``batch`` alone on the wire while the next is leased; return the next."""
        ahead: list[list[_Leased]] = []

        async def lease_ahead() -> None:
            ahead.append(await self._lease_ahead(run))

        try:
            async with anyio.create_task_group() as prefetch:
                prefetch.start_soon(lease_ahead)
                await self._push_batch(run, batch, settler)
        finally:
            window.release()
        return ahead[0]

    async def _push_in_window(
        self, run: _Run, batch: list[_Leased], settler: _Settler, window: anyio.Semaphore
    ) -> None:
        try:
            await self._push_batch(run, batch, settler)
        finally:
            window.release()

    async def _lease(self, run: _Run, *, count: bool = False) -> list[_Leased]:
        with anyio.CancelScope(shield=True):
            totals, batch, run.exhausted = await anyio.to_thread.run_sync(
                self._lease_batch, run.allowed, count
            )
            for leased in batch:
                run.held[leased.op.op_id] = leased
        if totals is not None:
            run.total = totals
            run.done = dict.fromkeys(SyncPriority, 0)
            self._publish_progress(run)
        return batch

    def _count_batch(self, run: _Run) -> None:
        # Ops unblocked during the run (or raised in priority) join the total.
        held = Counter(x.op.priority for x in run.held.values())
        for priority, count in held.items():
            run.total[priority] = max(run.total.get(priority, 0), run.done[priority] + count)

    def _work_totals(self, allowed: frozenset[SyncPriority]) -> tuple[dict[SyncPriority, int], int]:
        """The ops of the allowed priorities pending or leased, per priority (the totals a
        run's progress starts from), and how many of them are pending (in a worker
        thread)."""
        totals: dict[SyncPriority, int] = dict.fromkeys(SyncPriority, 0)
        pending = 0
        for target in self.targets:
            stats = target.queue.stats(target.collection)
            for priority in allowed:
                waiting = stats.count(priority, OpState.PENDING)
                pending += waiting
                totals[priority] += waiting + stats.count(priority, OpState.LEASED)
        return totals, pending

    @collector_paused()
    def _lease_batch(
        self, allowed: frozenset[SyncPriority], count: bool = False
    ) -> tuple[dict[SyncPriority, int] | None, list[_Leased], bool]:
        """Lease the next batch (in a worker thread), trimmed to the byte budget.

        Returns:
            The run's work totals (with ``count``, counted before the lease; else
            ``None``), the batch, and whether the queue had no more eligible ops (fewer
            found than asked for, none left out for the byte budget).
        """
        totals, pending = self._work_totals(allowed) if count else (None, None)
        size = self.config.batch_size
        ops: list[tuple[QueuedOp, int]] = []
        if len(self._groups) == 1:
            group = self._groups[0]
            names = [t.collection for t in group]
            batch = group[0].queue.lease(
                size, self.lease_for, collections=names, priorities=sorted(allowed), chunk=_CHUNK
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
        # No more: fewer found than asked for, or as many as were pending when counted.
        exhausted = len(ops) < size or (pending is not None and pending <= len(ops))
        keep = fit_batch([len(op.payload or b"") for op, _ in ops], self.config.max_batch_bytes)
        if keep < len(ops):
            exhausted = False
            self._release_ops(ops[keep:])
            ops = ops[:keep]
        return totals, [_prepare(op, token) for op, token in ops], exhausted

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
                result = await self._send(run, remote)
            except RemoteError as exc:
                plan = await self._plan_error(run, exc, len(part))
                if plan.action is BatchErrorAction.SPLIT:
                    first, second = split_batch(part)
                    parts[:0] = [first, second]
                    if plan.counts_as_failure:
                        run.consecutive_failures += 1
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
            await self._exchanged(run, defer=True)  # the settle submitted below clears it
            self._observe_server_clock()
            with collector_paused():
                decided = plan_results([x.op.op_id for x in part], result)
            settler.submit(decided)
            failed_ids = {f.op_id for f in decided.failures}
            blocked.update(item_key(x) for x in part if x.op.op_id in failed_ids)

    async def _send(self, run: _Run, ops: list[RemoteOp]) -> PushResult:
        """Push ``ops``, as the run's writer when the backend records writers."""
        if self.backend.writer_aware:
            return await self.backend.push(ops, writer=run.writer)
        return await self.backend.push(ops)

    async def _plan_error(self, run: _Run, error: RemoteError, batch_len: int) -> BatchErrorPlan:
        """Decide about a failed batch, probing the remote first when that decision needs
        to know whether the remote answers at all (see :func:`plan_batch_error`)."""
        config = self.config

        def plan(*, probed: bool = False) -> BatchErrorPlan:
            return plan_batch_error(
                error,
                batch_len=batch_len,
                consecutive_failures=run.consecutive_failures,
                max_consecutive_failures=config.max_consecutive_failures,
                answered=run.exchanged or run.reachable,
                probed=probed,
                depth=split_depth(config.batch_size),
            )

        decided = plan()
        if decided.action is BatchErrorAction.PROBE:
            decided = plan(probed=await self._probe(run) is not None)
        return decided

    async def _settle(self, run: _Run, plan: ResultPlan) -> None:
        """Apply a result plan to the queue and tables (shielded), then count it."""
        held = run.held
        acks = [(held[a.op_id], a) for a in plan.acks if a.op_id in held]
        failures = [(held[f.op_id], f) for f in plan.failures if f.op_id in held]
        with anyio.CancelScope(shield=True):
            stale = await anyio.to_thread.run_sync(self._settle_locally, run, acks, failures)
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
        self, run: _Run, acks: list[tuple[_Leased, Ack]], failures: list[tuple[_Leased, Failure]]
    ) -> set[str]:
        """Settle in the database; returns the op ids refused as stale (see _fencing)."""
        self._resume_if_due(run)
        stale: set[str] = set()
        by_lease: dict[tuple[str, int], list[tuple[_Leased, Ack]]] = defaultdict(list)
        for leased, ack in acks:
            by_lease[leased.op.collection, leased.token].append((leased, ack))
        chunks = [
            (key, leased_acks[start : start + _CHUNK])
            for key, leased_acks in by_lease.items()
            for start in range(0, len(leased_acks), _CHUNK)
        ]
        for (collection, token), chunk in chunks:
            items = chunk
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
