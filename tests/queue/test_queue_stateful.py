"""The queue against a plain in-memory model of its rules, driven by hypothesis.

The model restates DESIGN §4 as directly as possible: an op list, "the head of an item is
its oldest live op", eligibility, coalescing, priority raising, leases, backoff and dead
letters. Every step compares the whole queue (and every lease's answer) with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nexus_store import ErrorKind, SyncPriority
from nexus_store._backoff import RetryBackoff
from nexus_store.queue import OpState, PrioritySyncQueue
from nexus_store.testing import FakeClock

ITEMS = ["a", "b", "c"]
BASE, FACTOR, MAX_DELAY, MAX_ATTEMPTS = 10.0, 2.0, 1000.0, 4
priorities = st.sampled_from(list(SyncPriority))


@dataclass
class ModelOp:
    """What the model knows about one op."""

    op_id: str
    seq: int
    item: str
    payload: bytes
    priority: int
    state: str = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    leased_until: float | None = None
    lease_count: int = 0
    base_version: int = 0
    last_error: str | None = None


@dataclass
class Model:
    """The rules, restated over a plain list of ops."""

    draw: float
    ops: dict[str, ModelOp] = field(default_factory=dict)

    def live(self, item: str) -> list[ModelOp]:
        return sorted(
            (op for op in self.ops.values() if op.item == item and op.state != "dead"),
            key=lambda op: op.seq,
        )

    def is_head(self, op: ModelOp) -> bool:
        return op.state != "dead" and self.live(op.item)[0] is op

    def next_seq(self) -> int:
        return max((op.seq for op in self.ops.values()), default=0) + 1

    def raise_before(self, item: str, seq: int, priority: int) -> None:
        for op in self.live(item):
            if op.seq <= seq:
                op.priority = min(op.priority, priority)

    def enqueue(
        self, op_id: str, item: str, payload: bytes, priority: int, coalesce: bool, now: float
    ) -> str:
        live = self.live(item)
        tail = live[-1] if live else None
        if tail is not None:
            self.raise_before(item, tail.seq, priority)
            if coalesce and tail.state == "pending" and tail.attempts == tail.lease_count == 0:
                tail.payload = payload
                return tail.op_id
        self.ops[op_id] = ModelOp(
            op_id, self.next_seq(), item, payload, priority, next_attempt_at=now
        )
        return op_id

    def lease(self, max_ops: int, lease_for: float, allowed: set[int], now: float) -> list[str]:
        def available(op: ModelOp) -> bool:
            # Pending, or leased by a run whose lease has run out (it crashed).
            return op.state == "pending" or (
                op.state == "leased" and op.leased_until is not None and op.leased_until <= now
            )

        eligible = sorted(
            (
                op
                for op in self.ops.values()
                if available(op)
                and self.is_head(op)
                and op.next_attempt_at <= now
                and op.priority in allowed
            ),
            key=lambda op: (op.priority, op.seq),
        )[:max_ops]
        for op in eligible:
            op.state, op.leased_until, op.lease_count = (
                "leased",
                now + lease_for,
                op.lease_count + 1,
            )
        return [op.op_id for op in eligible]

    def remove(self, op_id: str, version: int | None = None) -> bool:
        op = self.ops.get(op_id)
        if op is None:
            return False
        was_head = self.is_head(op)
        del self.ops[op_id]
        if was_head and version is not None and self.live(op.item):
            self.live(op.item)[0].base_version = version
        return True

    def nack(self, op_id: str, kind: ErrorKind, retry_after: float | None, now: float) -> bool:
        op = self.ops.get(op_id)
        if op is None or op.state == "dead":
            return False
        op.leased_until = None
        if kind is ErrorKind.AUTH:
            # Refused credentials are not the op's failure: no attempt, no dead letter.
            op.last_error = f"error {op.attempts + 1}"
            op.state = "pending"
            op.next_attempt_at = now + (retry_after or 0.0)
            return True
        op.attempts += 1
        op.last_error = f"error {op.attempts}"
        if kind in (ErrorKind.PERMANENT, ErrorKind.CONFLICT) or op.attempts >= MAX_ATTEMPTS:
            op.state = "dead"
        else:
            ceiling = min(MAX_DELAY, BASE * FACTOR ** (op.attempts - 1))
            op.state = "pending"
            op.next_attempt_at = now + max(retry_after or 0.0, ceiling * self.draw)
        return True

    def release(self, op_id: str) -> bool:
        op = self.ops.get(op_id)
        if op is None or op.state != "leased":
            return False
        op.state, op.leased_until = "pending", None
        return True

    def retry_dead(self, op_ids: list[str], now: float) -> int:
        dead = sorted(
            (self.ops[i] for i in set(op_ids) if i in self.ops and self.ops[i].state == "dead"),
            key=lambda op: op.seq,
        )
        for op in dead:
            blocked = bool(self.live(op.item))
            op.seq = self.next_seq()
            op.state, op.attempts, op.next_attempt_at, op.leased_until = "pending", 0, now, None
            if blocked:
                self.raise_before(op.item, op.seq, op.priority)
        return len(dead)

    def rows(self) -> list[tuple[object, ...]]:
        return sorted(
            (
                op.seq,
                op.op_id,
                op.item,
                op.payload,
                op.priority,
                op.state,
                op.attempts,
                op.next_attempt_at if op.state != "dead" else None,
                op.leased_until,
                op.lease_count,
                op.base_version,
                op.state != "dead" and not self.is_head(op),
                op.last_error,
            )
            for op in self.ops.values()
        )


class QueueMachine(RuleBasedStateMachine):
    """Random sequences of queue calls, each checked against :class:`Model`."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1_000.0)
        self.queue: PrioritySyncQueue | None = None
        self.model = Model(draw=0.5)
        self.writes = 0
        self.known: list[str] = []

    @initialize(draw=st.sampled_from([0.5, 0.0, 0.37, 0.999]))
    def start(self, draw: float) -> None:
        self.model = Model(draw=draw)
        self.queue = PrioritySyncQueue(
            clock=self.clock,
            max_attempts=MAX_ATTEMPTS,
            backoff=RetryBackoff(BASE, FACTOR, MAX_DELAY, random=lambda: draw),
        )

    @property
    def q(self) -> PrioritySyncQueue:
        assert self.queue is not None
        return self.queue

    def pick(self, data: st.DataObject, state: str | None = None) -> list[str]:
        """Some op ids: mostly ops in ``state``, sometimes any known (maybe gone) or unknown."""
        # Ordered by seq, not by (random) op id, so hypothesis can replay its choices.
        preferred = [
            op.op_id
            for op in sorted(self.model.ops.values(), key=lambda op: op.seq)
            if op.state == state
        ]
        if preferred and data.draw(st.integers(0, 4)) > 0:
            return data.draw(st.lists(st.sampled_from(preferred), min_size=1, unique=True))
        choices = [*self.known, "00000000-0000-7000-8000-000000000000"]
        return data.draw(st.lists(st.sampled_from(choices), max_size=4, unique=True))

    @rule(item=st.sampled_from(ITEMS), priority=priorities, coalesce=st.booleans())
    def enqueue(self, item: str, priority: SyncPriority, coalesce: bool) -> None:
        self.writes += 1
        payload = f"w{self.writes}".encode()
        op = self.q.enqueue("c", item, payload, priority=priority, coalesce=coalesce)
        expected = self.model.enqueue(
            op.op_id, item, payload, int(priority), coalesce, self.clock.now()
        )
        assert op.op_id == expected
        if op.op_id not in self.known:
            self.known.append(op.op_id)

    @precondition(lambda self: self.has("pending") or self.has("leased"))
    @rule(
        max_ops=st.integers(1, 5),
        lease_for=st.sampled_from([1.0, 10.0, 30.0]),
        allowed=st.sets(priorities, min_size=1) | st.none(),
    )
    def lease(self, max_ops: int, lease_for: float, allowed: set[SyncPriority] | None) -> None:
        got = self.q.lease(max_ops, lease_for, priorities=allowed)
        wanted = self.model.lease(
            max_ops, lease_for, {int(p) for p in (allowed or SyncPriority)}, self.clock.now()
        )
        assert [op.op_id for op in got] == wanted
        assert all(op.state is OpState.LEASED for op in got)

    def has(self, state: str) -> bool:
        return any(op.state == state for op in self.model.ops.values())

    # Preconditions keep the machine where the rules bite: an ack, nack or release with
    # nothing leased (or a retry with nothing dead) is checked too, but is rarely worth a step.
    @precondition(lambda self: self.has("leased"))
    @rule(data=st.data(), with_versions=st.booleans())
    def ack(self, data: st.DataObject, with_versions: bool) -> None:
        chosen = self.pick(data, "leased")
        versions = {op_id: 100 + n for n, op_id in enumerate(chosen)} if with_versions else None
        removed = sum(
            self.model.remove(op_id, versions[op_id] if versions else None) for op_id in chosen
        )
        assert self.q.ack(chosen, versions=versions) == removed

    @precondition(lambda self: self.has("leased"))
    @rule(
        data=st.data(),
        kind=st.sampled_from(list(ErrorKind)),
        retry_after=st.none() | st.sampled_from([0.0, 3.0, 50.0]),
    )
    def nack(self, data: st.DataObject, kind: ErrorKind, retry_after: float | None) -> None:
        for op_id in self.pick(data, "leased"):
            op = self.model.ops.get(op_id)
            error = f"error {op.attempts + 1}" if op is not None else "error"
            changed = self.model.nack(op_id, kind, retry_after, self.clock.now())
            assert self.q.nack([op_id], error, kind=kind, retry_after=retry_after) == int(changed)

    @precondition(lambda self: self.has("leased"))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        chosen = self.pick(data, "leased")
        assert self.q.release(chosen) == sum(self.model.release(i) for i in chosen)

    @precondition(lambda self: self.has("dead"))
    @rule(data=st.data(), everything=st.booleans())
    def retry_dead(self, data: st.DataObject, everything: bool) -> None:
        if everything:
            dead = [op.op_id for op in self.model.ops.values() if op.state == "dead"]
            expected = self.model.retry_dead(dead, self.clock.now())
            assert self.q.retry_dead() == expected
        else:
            chosen = self.pick(data, "dead")
            assert self.q.retry_dead(chosen) == self.model.retry_dead(chosen, self.clock.now())

    @precondition(lambda self: self.known)
    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        chosen = self.pick(data)
        assert self.q.discard(chosen) == sum(self.model.remove(i) for i in chosen)

    # Exact lease lengths and backoff waits (5, 10, 20 s at draw 0.5) hit the boundaries.
    @rule(seconds=st.sampled_from([5.0, 10.0, 1.0, 0.0, 3.0, 20.0, 30.0, 50.0, 200.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def deadlines(self) -> list[float]:
        now = self.clock.now()
        times = [
            t
            for op in self.model.ops.values()
            for t in (op.leased_until, op.next_attempt_at if op.state == "pending" else None)
            if t is not None and t > now
        ]
        return sorted(times)

    # Jumping exactly to a lease end or a backoff end tests the boundaries (<= vs <).
    @precondition(lambda self: self.deadlines())
    @rule(data=st.data())
    def advance_to_a_deadline(self, data: st.DataObject) -> None:
        self.clock.set(data.draw(st.sampled_from(self.deadlines())))

    @invariant()
    def matches_model(self) -> None:
        if self.queue is None:
            return
        ops = self.q.pending(states=list(OpState))
        rows = sorted(
            (
                op.seq,
                op.op_id,
                op.item_id,
                op.payload,
                int(op.priority),
                op.state.value,
                op.attempts,
                op.next_attempt_at if op.state is not OpState.DEAD else None,
                op.leased_until,
                op.lease_count,
                op.base_version,
                op.blocked,
                op.last_error,
            )
            for op in ops
        )
        assert rows == self.model.rows()

    @invariant()
    def counts_and_pending_flags_agree(self) -> None:
        if self.queue is None:
            return
        stats = self.q.stats()
        states = [op.state for op in self.model.ops.values()]
        assert (stats.pending, stats.leased, stats.dead) == (
            states.count("pending"),
            states.count("leased"),
            states.count("dead"),
        )
        for item in ITEMS:
            assert self.q.is_pending("c", item) == bool(self.model.live(item))

    def teardown(self) -> None:
        if self.queue is not None:
            self.queue.close()


QueueMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMatchesModel = QueueMachine.TestCase
TestQueueMatchesModel.__doc__ = "The queue behaves like the model for any sequence of calls."
