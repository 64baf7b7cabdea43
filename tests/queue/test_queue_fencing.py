"""Lease fencing tokens: a settle from a holder whose lease passed on is refused, never applied.

The stateful test runs several leasers on one queue with leases that expire (FakeClock) and
checks, against a model of who holds what, that the queue never hands out an op of an item
another leaser still validly holds, always hands out an item's oldest live op, and applies a
settle only under the token that holds the op now.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from nexus_store import ErrorKind
from nexus_store._backoff import RetryBackoff
from nexus_store.queue import LeaseBatch, OpState, PrioritySyncQueue, Settled
from nexus_store.testing import FakeClock

ITEMS = ["a", "b", "c"]
LEASERS = 3
MAX_ATTEMPTS = 3


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a round time."""
    return FakeClock(1_000.0)


@pytest.fixture
def queue(clock: FakeClock) -> PrioritySyncQueue:
    """An in-memory queue on the fake clock."""
    return PrioritySyncQueue(clock=clock)


def test_a_late_release_does_not_end_the_current_holders_lease(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """A's lease expires and B leases the op: A's release is stale and C gets nothing."""
    queue.enqueue("c", "a", b"1")
    a = queue.lease(10, 30.0)
    clock.advance(31)
    b = queue.lease(10, 30.0)
    assert [op.op_id for op in b] == [op.op_id for op in a]
    assert a.token != b.token
    released = queue.release([op.op_id for op in a], token=a.token)
    assert released == 0
    assert released.stale == (a[0].op_id,)
    assert queue.lease(10, 30.0) == []  # B still holds it: nobody else may
    assert queue.get(a[0].op_id).state is OpState.LEASED


def test_a_late_nack_or_ack_is_reported_and_not_applied(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """Stale nack and ack change nothing; the current holder's ack applies."""
    op = queue.enqueue("c", "a", b"1")
    a = queue.lease(10, 30.0)
    clock.advance(31)
    b = queue.lease(10, 30.0)
    nacked = queue.nack([op.op_id], "late", token=a.token)
    assert (nacked, nacked.stale) == (0, (op.op_id,))
    assert queue.get(op.op_id).attempts == 0
    acked = queue.ack([op.op_id], token=a.token)
    assert (acked, acked.stale) == (0, (op.op_id,))
    assert queue.is_pending("c", "a")
    done = queue.ack([op.op_id], token=b.token)
    assert (done, done.stale) == (1, ())
    assert not queue.is_pending("c", "a")


def test_an_expired_lease_nobody_took_can_still_be_settled(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """A holder whose lease ran out, with nobody leasing since, still settles its op."""
    op = queue.enqueue("c", "a", b"1")
    batch = queue.lease(10, 30.0)
    clock.advance(60)
    assert queue.ack([op.op_id], token=batch.token) == 1


def test_a_settled_lease_cannot_be_settled_again(queue: PrioritySyncQueue) -> None:
    """After a release, the same token settles nothing (the op may be leased by anyone)."""
    op = queue.enqueue("c", "a", b"1")
    batch = queue.lease(10, 30.0)
    assert queue.release([op.op_id], token=batch.token) == 1
    again = queue.nack([op.op_id], "late", token=batch.token)
    assert (again, again.stale) == (0, (op.op_id,))
    assert queue.get(op.op_id).attempts == 0


def test_settles_without_a_token_act_on_any_op(queue: PrioritySyncQueue, clock: FakeClock) -> None:
    """Callers that pass no token keep the unfenced behaviour (admin tools, old callers)."""
    op = queue.enqueue("c", "a", b"1")
    queue.lease(10, 30.0)
    clock.advance(31)
    queue.lease(10, 30.0)
    assert queue.release([op.op_id]) == 1
    assert queue.ack([op.op_id]) == 1


def test_a_bad_token_is_a_value_error(queue: PrioritySyncQueue) -> None:
    """A token must be the int a lease returned."""
    with pytest.raises(ValueError, match="lease token"):
        queue.ack(["x"], token="1")  # type: ignore[arg-type]


@dataclass
class ModelOp:
    """What the model knows of one op."""

    op_id: str
    item: str
    seq: int
    token: int | None = None
    """The token it is validly held under (None: not held)."""
    leased_until: float | None = None
    dead: bool = False
    attempts: int = 0


@dataclass
class Leaser:
    """One sync run: the batches it was handed (it may still try to settle them)."""

    batches: list[LeaseBatch] = field(default_factory=list)


class FencingMachine(RuleBasedStateMachine):
    """Several leasers with expiring leases, settling late and early, on one queue."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1_000.0)
        self.queue = PrioritySyncQueue(
            clock=self.clock,
            max_attempts=MAX_ATTEMPTS,
            backoff=RetryBackoff(1.0, 2.0, 10.0, random=lambda: 0.0),
        )
        self.ops: dict[str, ModelOp] = {}
        self.leasers = [Leaser() for _ in range(LEASERS)]
        self.seq = 0
        self.acked: dict[str, list[int]] = {item: [] for item in ITEMS}
        self.double_holds = 0

    @initialize()
    def start(self) -> None:
        """Nothing to set up beyond __init__."""

    def live(self, item: str) -> list[ModelOp]:
        return sorted(
            (op for op in self.ops.values() if op.item == item and not op.dead),
            key=lambda op: op.seq,
        )

    @rule(item=st.sampled_from(ITEMS), coalesce=st.booleans())
    def enqueue(self, item: str, coalesce: bool) -> None:
        op = self.queue.enqueue("c", item, b"x", coalesce=coalesce)
        if op.op_id not in self.ops:
            self.seq += 1
            self.ops[op.op_id] = ModelOp(op.op_id, item, self.seq)

    @rule(
        who=st.integers(0, LEASERS - 1),
        max_ops=st.integers(1, 4),
        lease_for=st.sampled_from([5.0, 20.0]),
    )
    def lease(self, who: int, max_ops: int, lease_for: float) -> None:
        now = self.clock.now()
        batch = self.queue.lease(max_ops, lease_for)
        assert isinstance(batch, LeaseBatch)
        for got in batch:
            op = self.ops[got.op_id]
            live = self.live(op.item)
            # Per-item order: only an item's oldest live op is handed out ...
            assert live[0] is op, f"{op.op_id} handed out before an older op of {op.item}"
            # ... and never while someone validly holds it under an unexpired lease.
            if op.token is not None and op.leased_until is not None and op.leased_until > now:
                self.double_holds += 1
            op.token, op.leased_until = batch.token, now + lease_for
        self.leasers[who].batches.append(batch)

    def pick(self, data: st.DataObject, who: int) -> tuple[LeaseBatch, list[str]] | None:
        batches = [b for b in self.leasers[who].batches if b]
        if not batches:
            return None
        batch = data.draw(st.sampled_from(batches))
        ids = data.draw(st.lists(st.sampled_from([op.op_id for op in batch]), min_size=1))
        return batch, ids

    def check_settled(self, settled: Settled, ids: list[str], valid: list[str]) -> None:
        unique = list(dict.fromkeys(ids))
        assert int(settled) == len(valid)
        assert set(settled.stale) == set(unique) - set(valid)

    def valid(self, ids: list[str], token: int) -> list[str]:
        unique = list(dict.fromkeys(ids))
        return [i for i in unique if i in self.ops and self.ops[i].token == token]

    @rule(data=st.data(), who=st.integers(0, LEASERS - 1))
    def ack(self, data: st.DataObject, who: int) -> None:
        picked = self.pick(data, who)
        if picked is None:
            return
        batch, ids = picked
        valid = self.valid(ids, batch.token)
        settled = self.queue.ack(ids, token=batch.token)
        self.check_settled(settled, ids, valid)
        for op_id in valid:
            op = self.ops.pop(op_id)
            self.acked[op.item].append(op.seq)

    @rule(data=st.data(), who=st.integers(0, LEASERS - 1), permanent=st.booleans())
    def nack(self, data: st.DataObject, who: int, permanent: bool) -> None:
        picked = self.pick(data, who)
        if picked is None:
            return
        batch, ids = picked
        valid = self.valid(ids, batch.token)
        kind = ErrorKind.PERMANENT if permanent else ErrorKind.RETRYABLE
        settled = self.queue.nack(ids, "failed", kind=kind, token=batch.token)
        self.check_settled(settled, ids, valid)
        for op_id in valid:
            op = self.ops[op_id]
            op.token = op.leased_until = None
            op.attempts += 1
            op.dead = permanent or op.attempts >= MAX_ATTEMPTS

    @rule(data=st.data(), who=st.integers(0, LEASERS - 1))
    def release(self, data: st.DataObject, who: int) -> None:
        picked = self.pick(data, who)
        if picked is None:
            return
        batch, ids = picked
        valid = self.valid(ids, batch.token)
        settled = self.queue.release(ids, token=batch.token)
        self.check_settled(settled, ids, valid)
        for op_id in valid:
            self.ops[op_id].token = self.ops[op_id].leased_until = None

    @rule(seconds=st.sampled_from([1.0, 5.0, 6.0, 21.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: any(op.dead for op in self.ops.values()))
    @rule()
    def retry_dead(self) -> None:
        for op in sorted(self.ops.values(), key=lambda op: op.seq):
            if op.dead:
                op.dead, op.attempts = False, 0
                self.seq += 1
                op.seq = self.seq
        self.queue.retry_dead()

    @invariant()
    def never_two_holders(self) -> None:
        assert self.double_holds == 0
        now = self.clock.now()
        for item in ITEMS:
            holders = [
                op
                for op in self.ops.values()
                if op.item == item
                and op.token is not None
                and op.leased_until is not None
                and op.leased_until > now
            ]
            assert len(holders) <= 1

    @invariant()
    def acks_follow_item_order(self) -> None:
        for seqs in self.acked.values():
            assert seqs == sorted(seqs)

    @invariant()
    def leased_ops_match(self) -> None:
        leased = {op.op_id for op in self.queue.pending(states=[OpState.LEASED])}
        assert leased == {op.op_id for op in self.ops.values() if op.token is not None}

    def teardown(self) -> None:
        self.queue.close()


FencingMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFencing = FencingMachine.TestCase
TestFencing.__doc__ = (
    "Several leasers, expiring leases: never two holders of an item, per-item order kept."
)


@pytest.mark.slow
def test_fencing_at_length() -> None:
    """The fencing machine at a larger count (``-m slow``)."""
    run_state_machine_as_test(
        FencingMachine,
        settings=settings(
            max_examples=2000,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
