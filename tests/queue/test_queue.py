"""The persisted priority sync queue: its public API and the rules of DESIGN §4."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from nexus_store import (
    CorruptDatabaseError,
    ErrorKind,
    MigrationError,
    OpNotFoundError,
    QueueError,
    SchemaError,
    StoreClosedError,
    SyncPriority,
)
from nexus_store._backoff import RetryBackoff
from nexus_store._codec import decode, encode
from nexus_store._database import Database
from nexus_store.queue import OpKind, OpState, PrioritySyncQueue, QueuedOp, QueueStats
from nexus_store.queue._leasing import _LEASE, _PROMOTE
from nexus_store.queue._settling import _DELETE_MANY
from nexus_store.queue._upgrades import upgrade_payload
from nexus_store.testing import FakeClock

C, H, N, L = SyncPriority.CRITICAL, SyncPriority.HIGH, SyncPriority.NORMAL, SyncPriority.LOW


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a fixed start."""
    return FakeClock(1_000_000.0)


@pytest.fixture
def queue(clock: FakeClock) -> Iterator[PrioritySyncQueue]:
    """An in-memory queue with a deterministic backoff (half the ceiling) and 3 attempts."""
    q = PrioritySyncQueue(
        clock=clock,
        max_attempts=3,
        backoff=RetryBackoff(base=10.0, factor=2.0, max_delay=1000.0, random=lambda: 0.5),
    )
    yield q
    q.close()


def ids(ops: list[QueuedOp]) -> list[str | int]:
    """The item ids of ``ops``, in order."""
    return [op.item_id for op in ops]


# -- order and ids -----------------------------------------------------------------------------


def test_lease_order_is_priority_then_fifo(queue: PrioritySyncQueue) -> None:
    """Ops come out most urgent first, and in insertion order within a priority."""
    for item, prio in [("a", L), ("b", N), ("c", C), ("d", N), ("e", H), ("f", C), ("g", L)]:
        queue.enqueue("notes", item, b"x", priority=prio)
    assert ids(queue.lease(3)) == ["c", "f", "e"]
    assert ids(queue.lease(10)) == ["b", "d", "a", "g"]
    assert queue.lease(10) == []


def test_a_lease_in_chunks_hands_out_what_one_transaction_would(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """``lease(n, chunk=k)`` hands out the same ops in the same order under one token, and
    records the deadline watermark (the durable commit after the chunks)."""
    prios = [L, N, C, H]
    for i in range(23):
        queue.enqueue("notes", f"i{i:02d}", b"x", priority=prios[i % 4])
    other = PrioritySyncQueue(clock=clock)
    try:
        for i in range(23):
            other.enqueue("notes", f"i{i:02d}", b"x", priority=prios[i % 4])
        whole = other.lease(20)
    finally:
        other.close()
    chunked = queue.lease(20, chunk=3)
    assert ids(chunked) == ids(whole)
    assert {op.state for op in chunked} == {OpState.LEASED}
    assert ids(queue.lease(20, chunk=3)) == ["i12", "i16", "i20"]  # the last LOW ones
    assert queue.lease(5, chunk=2) == []
    with queue.database.reading() as conn:
        assert conn.execute("SELECT wall FROM nx_clock").fetchone() == (clock.now(),)


@pytest.mark.parametrize("chunk", [0, -1, True, 1.5])
def test_a_lease_refuses_a_bad_chunk(queue: PrioritySyncQueue, chunk: Any) -> None:
    """``chunk`` must be a positive int (or None)."""
    with pytest.raises(ValueError, match="chunk"):
        queue.lease(5, chunk=chunk)


def test_enqueue_returns_a_typed_record_with_a_uuid_op_id(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """The returned record carries every field; op ids are distinct valid uuids."""
    op = queue.enqueue(
        "notes", 7, b"payload", priority="high", schema_version=2, base_version=4, tag="t"
    )
    assert isinstance(op, QueuedOp)
    assert uuid.UUID(op.op_id).version == 7
    assert (op.collection, op.item_id, op.kind, op.priority) == ("notes", 7, OpKind.UPSERT, H)
    assert (op.payload, op.schema_version, op.base_version, op.tag) == (b"payload", 2, 4, "t")
    assert (op.state, op.attempts, op.blocked, op.lease_count) == (OpState.PENDING, 0, False, 0)
    assert op.created_at == op.updated_at == op.next_attempt_at == clock.now()
    assert op.hlc
    assert queue.get(op.op_id) == op
    other = queue.enqueue("notes", 8, b"payload")
    assert other.op_id != op.op_id
    assert other.seq > op.seq


def test_op_id_never_changes_across_retries_expiry_and_release(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """Nack, lease expiry, release and retry_dead all keep the op id."""
    op = queue.enqueue("notes", "n1", b"x")
    (leased,) = queue.lease(1, lease_for=5)
    assert leased.op_id == op.op_id
    queue.release([op.op_id])
    (leased,) = queue.lease(1, lease_for=5)
    clock.advance(6)
    (leased,) = queue.lease(1, lease_for=5)
    queue.nack([op.op_id], "boom")
    clock.advance(1000)
    (leased,) = queue.lease(1)
    queue.nack([op.op_id], "gone", kind=ErrorKind.PERMANENT)
    assert queue.retry_dead() == 1
    (leased,) = queue.lease(1)
    assert leased.op_id == op.op_id
    assert leased.lease_count == 5


def test_int_and_str_item_ids_are_different_items(queue: PrioritySyncQueue) -> None:
    """Item id 1 and item id "1" do not coalesce: the column keeps their types."""
    a = queue.enqueue("notes", 1, b"int")
    b = queue.enqueue("notes", "1", b"str")
    assert a.op_id != b.op_id
    assert {type(op.item_id) for op in queue.lease(10)} == {int, str}


# -- coalescing and per-item order -------------------------------------------------------------


def test_newer_write_coalesces_into_a_pending_op(queue: PrioritySyncQueue) -> None:
    """Latest payload, kind, hlc and schema version; more urgent priority; older seq and id."""
    first = queue.enqueue("notes", "n1", b"v1", priority=L, hlc="h1", tag="first")
    queue.enqueue("notes", "other", b"x", priority=H)
    second = queue.enqueue("notes", "n1", b"v2", priority=H, hlc="h2", schema_version=2)
    assert (second.op_id, second.seq) == (first.op_id, first.seq)
    assert (second.payload, second.hlc, second.schema_version) == (b"v2", "h2", 2)
    assert (second.priority, second.tag) == (H, "first")
    third = queue.enqueue("notes", "n1", None, kind=OpKind.DELETE, priority=L, hlc="h3")
    assert third.op_id == first.op_id
    assert (third.kind, third.payload, third.priority) == (OpKind.DELETE, None, H)
    assert len(queue.pending()) == 2
    assert ids(queue.lease(10)) == ["n1", "other"]  # H, then FIFO: n1 is older


def test_newer_write_waits_while_the_older_op_is_leased(queue: PrioritySyncQueue) -> None:
    """A write during a lease is a new op that is not eligible until the older op is acked."""
    first = queue.enqueue("notes", "n1", b"v1")
    (leased,) = queue.lease(10)
    second = queue.enqueue("notes", "n1", b"v2")
    third = queue.enqueue("notes", "n1", b"v3")  # coalesces into the waiting op
    assert second.op_id != first.op_id
    assert second.blocked
    assert third.op_id == second.op_id
    assert queue.lease(10) == []
    assert queue.ack([leased.op_id], versions={leased.op_id: 42}) == 1
    (nxt,) = queue.lease(10)
    assert (nxt.op_id, nxt.payload, nxt.base_version, nxt.blocked) == (
        second.op_id,
        b"v3",
        42,
        False,
    )


def test_acks_hand_over_in_the_order_given(queue: PrioritySyncQueue) -> None:
    """Acking an item's head and the op behind it at once: the next op is based on the
    version of the last head acked, as if the acks came one by one in that order."""
    ops = [queue.enqueue("notes", "n", f"v{i}".encode(), coalesce=False) for i in range(4)]
    ids = [op.op_id for op in ops]
    queue.lease(10)
    assert queue.ack(ids[:2], versions={ids[0]: 100, ids[1]: 101}) == 2
    (head,) = queue.lease(10)
    assert (head.op_id, head.base_version) == (ids[2], 101)
    # An op acked before the head in the list was not a head then: its version is unused.
    m = [queue.enqueue("notes", "m", b"x", coalesce=False).op_id for _ in range(4)]
    queue.lease(10)
    assert queue.ack([m[2], m[0], m[1]], versions={m[0]: 10, m[1]: 11, m[2]: 12}) == 3
    (last,) = queue.pending("notes", "m")
    assert (last.op_id, last.base_version, last.blocked) == (m[3], 11, False)


def test_lease_state_is_kept_beside_the_op(queue: PrioritySyncQueue, clock: FakeClock) -> None:
    """A lease writes nx_leases only; ack and discard remove the op's lease state with it."""
    a = queue.enqueue("notes", "a", b"x")
    b = queue.enqueue("notes", "b", b"x")
    before = queue.database.execute("SELECT * FROM nx_queue ORDER BY seq")
    leased = queue.lease(10)
    assert [op.state for op in leased] == [OpState.LEASED, OpState.LEASED]
    assert queue.database.execute("SELECT * FROM nx_queue ORDER BY seq") == before
    assert queue.database.execute("SELECT count(*) FROM nx_leases")[0][0] == 2
    queue.ack(a.op_id)
    queue.discard(b.op_id)
    assert queue.database.execute("SELECT count(*) FROM nx_leases")[0][0] == 0


def test_a_queue_of_the_older_layout_keeps_its_leases(tmp_path: Path, clock: FakeClock) -> None:
    """Lease state kept in nx_queue's own columns (older layout) moves to nx_leases on
    open: a leased op stays leased until its lease ends, an op leased once never merges."""
    path = tmp_path / "old.db"
    q = PrioritySyncQueue(path, clock=clock)
    leased = q.enqueue("notes", "a", b"x")
    released = q.enqueue("notes", "b", b"x")
    fresh = q.enqueue("notes", "c", b"x")
    q.close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE nx_leases")  # the trigger goes with it
    conn.execute(
        "UPDATE nx_queue SET state = 'leased', leased_until = ?, lease_count = 1 WHERE op_id = ?",
        (clock.now() + 30, leased.op_id),
    )
    conn.execute("UPDATE nx_queue SET lease_count = 2 WHERE op_id = ?", (released.op_id,))
    conn.commit()
    conn.close()
    inspected = PrioritySyncQueue(path, clock=clock, create=False)  # the file stays as it is
    assert inspected.stats().leased == 1
    shown = {op.op_id: op for op in inspected.pending()}
    assert (shown[leased.op_id].state, shown[leased.op_id].lease_count) == (OpState.LEASED, 1)
    assert shown[leased.op_id].leased_until == clock.now() + 30
    assert shown[released.op_id].lease_count == 2
    inspected.close()
    check = Database(path)
    assert check.execute("SELECT name FROM sqlite_master WHERE name = 'nx_leases'") == []
    check.close()
    q = PrioritySyncQueue(path, clock=clock)
    got = {op.op_id: op for op in q.pending()}
    assert (got[leased.op_id].state, got[leased.op_id].lease_count) == (OpState.LEASED, 1)
    assert got[leased.op_id].leased_until == clock.now() + 30
    assert (got[released.op_id].state, got[released.op_id].lease_count) == (OpState.PENDING, 2)
    assert [op.op_id for op in q.lease(10)] == [released.op_id, fresh.op_id]
    assert q.enqueue("notes", "b", b"y").op_id != released.op_id  # leased once: no merge
    clock.advance(31)  # every lease has run out: all three are handed out again, in order
    again = q.lease(10)
    assert [op.op_id for op in again] == [leased.op_id, released.op_id, fresh.op_id]
    assert [op.lease_count for op in again] == [2, 4, 2]
    q.close()


def test_no_coalescing_into_an_op_that_may_have_been_sent(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """After a lease (released or nacked) the op may have reached the server: no merge."""
    released = queue.enqueue("notes", "r", b"v1")
    nacked = queue.enqueue("notes", "k", b"v1")
    queue.lease(10)
    queue.release([released.op_id])
    queue.nack([nacked.op_id], "timeout")
    assert queue.enqueue("notes", "r", b"v2").op_id != released.op_id
    assert queue.enqueue("notes", "k", b"v2").op_id != nacked.op_id
    assert ids(queue.lease(10)) == ["r"]  # "k" backs off; both second writes wait
    assert queue.get(nacked.op_id).payload == b"v1"


def test_coalesce_false_keeps_every_op_in_order(queue: PrioritySyncQueue) -> None:
    """Audit style: every write is an op; an item's ops become eligible one at a time."""
    ops = [queue.enqueue("audit", "a", f"v{i}".encode(), coalesce=False) for i in range(3)]
    assert len({op.op_id for op in ops}) == 3
    assert [op.blocked for op in ops] == [False, True, True]
    sent = []
    for _ in range(3):
        (op,) = queue.lease(10)
        sent.append(op.payload)
        assert queue.lease(10) == []
        queue.ack([op.op_id])
    assert sent == [b"v0", b"v1", b"v2"]


def test_urgent_op_raises_its_blocking_predecessors(queue: PrioritySyncQueue) -> None:
    """An urgent op lifts the item's earlier ops to its priority, so it is never stuck."""
    queue.enqueue("other", "x", b"x", priority=H)
    low1 = queue.enqueue("audit", "a", b"v1", priority=L, coalesce=False)
    low2 = queue.enqueue("audit", "a", b"v2", priority=L, coalesce=False)
    crit = queue.enqueue("audit", "a", b"v3", priority=C, coalesce=False)
    assert queue.get(low1.op_id).priority == C
    assert queue.get(low2.op_id).priority == C
    assert crit.priority == C
    # Even when LOW is excluded (metered network), the raised chain goes first.
    assert ids(queue.lease(10, priorities={C, H, N})) == ["a", "x"]
    later = queue.enqueue("audit", "a", b"v4", priority=L, coalesce=False)
    assert later.priority == L  # a less urgent op never lowers its predecessors
    assert queue.get(low2.op_id).priority == C


def test_per_item_order_holds_with_mixed_priorities(queue: PrioritySyncQueue) -> None:
    """A critical write to an item whose low op is in flight waits for that op's ack."""
    low = queue.enqueue("notes", "n1", b"old", priority=L)
    queue.enqueue("notes", "n2", b"x", priority=N)
    assert ids(queue.lease(1, priorities=[L])) == ["n1"]
    crit = queue.enqueue("notes", "n1", b"new", priority=C)
    assert queue.get(low.op_id).priority == C  # the op it waits for was raised too
    assert ids(queue.lease(10)) == ["n2"]
    queue.ack([low.op_id])
    (op,) = queue.lease(10)
    assert (op.op_id, op.payload) == (crit.op_id, b"new")


def test_dead_op_does_not_block_later_ops_of_its_item(queue: PrioritySyncQueue) -> None:
    """Dead-lettering the in-flight op makes the waiting op of its item eligible."""
    first = queue.enqueue("notes", "n1", b"v1")
    queue.lease(10)
    second = queue.enqueue("notes", "n1", b"v2")
    queue.nack([first.op_id], "invalid", kind=ErrorKind.PERMANENT)
    (op,) = queue.lease(10)
    assert op.op_id == second.op_id
    third = queue.enqueue("notes", "n1", b"v3")
    assert third.op_id != first.op_id  # nothing coalesces into a dead op


def test_discarding_the_head_unblocks_the_next_op(queue: PrioritySyncQueue) -> None:
    """Discarding a leased op frees the op waiting behind it."""
    first = queue.enqueue("notes", "n1", b"v1")
    queue.lease(10)
    second = queue.enqueue("notes", "n1", b"v2")
    assert queue.discard([first.op_id]) == 1
    assert [op.op_id for op in queue.lease(10)] == [second.op_id]
    assert queue.discard(["missing"]) == 0


# -- leases ------------------------------------------------------------------------------------


def test_expired_lease_makes_ops_eligible_again(queue: PrioritySyncQueue, clock: FakeClock) -> None:
    """A crashed worker's lease runs out; the ops are leased again in order."""
    for item in ["a", "b", "c"]:
        queue.enqueue("notes", item, b"x")
    first = queue.lease(2, lease_for=30)
    assert all(op.leased_until == clock.now() + 30 for op in first)
    clock.advance(29)
    assert ids(queue.lease(10, lease_for=30)) == ["c"]
    clock.advance(1)
    again = queue.lease(10, lease_for=30)
    assert ids(again) == ["a", "b"]
    assert [op.op_id for op in again] == [op.op_id for op in first]
    assert all(op.attempts == 0 and op.lease_count == 2 for op in again)


def test_ack_after_expiry_still_removes_the_op(queue: PrioritySyncQueue, clock: FakeClock) -> None:
    """A slow worker's ack counts even if its lease ran out (at-least-once delivery)."""
    op = queue.enqueue("notes", "a", b"x")
    queue.lease(10, lease_for=1)
    clock.advance(5)
    assert queue.ack(op.op_id) == 1
    assert queue.lease(10) == []
    assert queue.ack(op.op_id) == 0


def test_release_returns_ops_without_counting_an_attempt(queue: PrioritySyncQueue) -> None:
    """Cancelled runs give ops back untouched, at their original place."""
    queue.enqueue("notes", "a", b"x")
    queue.enqueue("notes", "b", b"x")
    leased = queue.lease(10)
    assert queue.release([op.op_id for op in leased]) == 2
    assert queue.release([op.op_id for op in leased]) == 0  # not leased any more
    again = queue.lease(10)
    assert ids(again) == ["a", "b"]
    assert all(op.attempts == 0 and op.last_error is None for op in again)


def test_lease_filters_collections_and_priorities(queue: PrioritySyncQueue) -> None:
    """Only the allowed collections and priorities are leased; an empty set leases nothing."""
    queue.enqueue("notes", "a", b"x", priority=L)
    queue.enqueue("tasks", "b", b"x", priority=N)
    queue.enqueue("notes", "c", b"x", priority=H)
    assert queue.lease(10, priorities=[]) == []
    assert ids(queue.lease(10, collections="notes", priorities=["HIGH", N])) == ["c"]
    assert ids(queue.lease(10, collections=["tasks", "nothing"])) == ["b"]
    assert ids(queue.lease(10)) == ["a"]


# -- failures ----------------------------------------------------------------------------------


def test_nack_backs_off_with_jitter_and_counts_attempts(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """Attempt n waits ceiling(n) * random(): 5 s, then 10 s, with the fixed draw of 0.5."""
    op = queue.enqueue("notes", "a", b"x")
    queue.lease(10)
    assert queue.nack([op.op_id], "503") == 1
    failed = queue.get(op.op_id)
    assert (failed.state, failed.attempts, failed.last_error) == (OpState.PENDING, 1, "503")
    assert failed.error_kind == ErrorKind.RETRYABLE
    assert failed.next_attempt_at == clock.now() + 5.0
    clock.advance(4.9)
    assert queue.lease(10) == []
    clock.advance(0.1)
    queue.lease(10)
    queue.nack([op.op_id], "503")
    assert queue.get(op.op_id).next_attempt_at == clock.now() + 10.0


def test_nack_honours_retry_after_when_longer(queue: PrioritySyncQueue, clock: FakeClock) -> None:
    """A server's Retry-After longer than the backoff wins; a shorter one does not."""
    a = queue.enqueue("notes", "a", b"x")
    b = queue.enqueue("notes", "b", b"x")
    queue.lease(10)
    queue.nack([a.op_id], "429", retry_after=120.0)
    queue.nack([b.op_id], "429", retry_after=1.0)
    assert queue.get(a.op_id).next_attempt_at == clock.now() + 120.0
    assert queue.get(b.op_id).next_attempt_at == clock.now() + 5.0


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999999])
def test_jittered_wait_stays_within_zero_and_the_ceiling(clock: FakeClock, draw: float) -> None:
    """With full jitter the wait lies in [0, ceiling]; a zero draw retries at once."""
    policy = RetryBackoff(base=8.0, factor=2.0, max_delay=100.0, random=lambda: draw)
    with PrioritySyncQueue(clock=clock, backoff=policy) as queue:
        op = queue.enqueue("notes", "a", b"x")
        for attempt in range(1, 6):
            clock.advance(1000)
            queue.lease(1)
            queue.nack(op.op_id, "again")
            wait = queue.get(op.op_id).next_attempt_at - clock.now()
            assert 0.0 <= wait <= policy.ceiling(attempt)
            assert wait == pytest.approx(policy.ceiling(attempt) * draw)


def test_max_attempts_moves_the_op_to_dead_letters(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """The third failure (max_attempts=3) dead-letters the op with its reason and kind."""
    op = queue.enqueue("notes", "a", b"x")
    for _ in range(3):
        clock.advance(1000)
        (leased,) = queue.lease(10)
        queue.nack([leased.op_id], "still failing", kind=ErrorKind.RETRYABLE)
    dead = queue.get(op.op_id)
    assert (dead.state, dead.attempts, dead.last_error) == (OpState.DEAD, 3, "still failing")
    assert dead.error_kind == ErrorKind.RETRYABLE
    assert dead.leased_until is None
    clock.advance(10_000)
    assert queue.lease(10) == []


@pytest.mark.parametrize("kind", [ErrorKind.PERMANENT, ErrorKind.CONFLICT])
def test_permanent_and_unresolved_conflict_dead_letter_at_once(
    queue: PrioritySyncQueue, kind: ErrorKind
) -> None:
    """One permanent or conflict nack dead-letters the op; other items are not blocked."""
    bad = queue.enqueue("notes", "bad", b"x", priority=C)
    queue.enqueue("notes", "good", b"x")
    queue.lease(1)
    queue.nack([bad.op_id], "422: title too long", kind=kind)
    assert [op.item_id for op in queue.dead()] == ["bad"]
    assert queue.dead()[0].error_kind == kind
    assert ids(queue.lease(10)) == ["good"]


def test_nack_ignores_unknown_and_dead_ops(queue: PrioritySyncQueue) -> None:
    """Nacking an acked (gone) or dead op changes nothing."""
    op = queue.enqueue("notes", "a", b"x")
    queue.lease(10)
    queue.nack(op.op_id, "no", kind=ErrorKind.PERMANENT)
    assert queue.nack([op.op_id, "missing"], "again") == 0
    assert queue.get(op.op_id).attempts == 1


# -- dead letters --------------------------------------------------------------------------------


def test_retry_dead_reenqueues_at_the_back_with_the_same_id(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """A retried op is pending again with attempts reset, behind ops queued meanwhile."""
    a = queue.enqueue("notes", "a", b"x", priority=N)
    b = queue.enqueue("tasks", "b", b"x", priority=N)
    queue.lease(10)
    queue.nack([a.op_id, b.op_id], "bad", kind=ErrorKind.PERMANENT)
    queue.enqueue("notes", "c", b"x", priority=N)
    assert [op.op_id for op in queue.dead("notes")] == [a.op_id]
    assert len(queue.dead()) == 2
    assert queue.retry_dead([a.op_id, "missing"]) == 1
    revived = queue.get(a.op_id)
    assert (revived.state, revived.attempts, revived.last_error) == (OpState.PENDING, 0, "bad")
    assert ids(queue.lease(10)) == ["c", "a"]
    assert queue.retry_dead() == 1
    assert queue.dead() == []


def test_retried_dead_op_waits_behind_newer_ops_of_its_item(queue: PrioritySyncQueue) -> None:
    """Reviving a dead op never lets it overtake its item's live op."""
    first = queue.enqueue("notes", "n1", b"v1")
    queue.lease(10)
    queue.nack(first.op_id, "bad", kind=ErrorKind.PERMANENT)
    second = queue.enqueue("notes", "n1", b"v2")
    queue.retry_dead()
    assert queue.get(first.op_id).blocked
    assert [op.op_id for op in queue.lease(10)] == [second.op_id]
    queue.ack(second.op_id)
    assert [op.op_id for op in queue.lease(10)] == [first.op_id]


def test_repeated_ids_count_once(queue: PrioritySyncQueue) -> None:
    """An id given twice is one op: one attempt, one revival, one removal."""
    op = queue.enqueue("notes", "a", b"x")
    queue.lease(10)
    assert queue.nack([op.op_id, op.op_id], "503") == 1
    assert queue.get(op.op_id).attempts == 1
    queue.nack(op.op_id, "bad", kind=ErrorKind.PERMANENT)
    assert queue.retry_dead([op.op_id, op.op_id]) == 1
    assert queue.ack([op.op_id, op.op_id]) == 1


def test_discard_removes_dead_letters(queue: PrioritySyncQueue) -> None:
    """Discarded dead ops are gone for good."""
    op = queue.enqueue("notes", "a", b"x")
    queue.lease(10)
    queue.nack(op.op_id, "bad", kind=ErrorKind.PERMANENT)
    assert queue.discard([op.op_id]) == 1
    assert queue.dead() == []
    with pytest.raises(OpNotFoundError):
        queue.get(op.op_id)


# -- migrations ----------------------------------------------------------------------------------


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    upgraded = dict(data)
    upgraded["title"] = upgraded.pop("name")
    return upgraded


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "tags": []}


def test_lease_upgrades_payloads_of_older_schema_versions(queue: PrioritySyncQueue) -> None:
    """Registered steps run in order at lease; the upgraded payload is stored."""
    old = queue.enqueue("notes", "a", encode({"id": "a", "name": "x"}), schema_version=1)
    current = queue.enqueue(
        "notes", "b", encode({"id": "b", "title": "y", "tags": []}), schema_version=3
    )
    gone = queue.enqueue("notes", "c", None, kind=OpKind.DELETE, schema_version=1)
    queue.register_migration("notes", 1, _v1_to_v2)
    queue.register_migration("notes", 2, _v2_to_v3)
    queue.set_schema_version("notes", 3)
    assert queue.schema_version("notes") == 3
    leased = {op.item_id: op for op in queue.lease(10)}
    assert decode(leased["a"].payload or b"") == {"id": "a", "title": "x", "tags": []}
    assert leased["a"].schema_version == 3
    assert queue.get(old.op_id).schema_version == 3
    assert leased["b"].payload == current.payload
    assert (leased["c"].payload, leased["c"].schema_version) == (None, 3)
    assert gone.op_id == leased["c"].op_id


def test_payload_that_cannot_be_upgraded_is_dead_lettered(queue: PrioritySyncQueue) -> None:
    """A missing or failing step dead-letters the op with the reason; the rest is leased."""
    missing = queue.enqueue("notes", "a", encode({"name": "x"}), schema_version=1)
    broken = queue.enqueue("tasks", "b", encode({"name": "x"}), schema_version=1)
    garbage = queue.enqueue("tasks", "c", b"\xc1", schema_version=1)
    fine = queue.enqueue("tasks", "d", encode({"name": "y"}), schema_version=2)

    def explode(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("due")

    queue.register_migration("tasks", 1, explode)
    queue.set_schema_version("notes", 2)
    queue.set_schema_version("tasks", 2)
    assert [op.op_id for op in queue.lease(2)] == [fine.op_id]
    reasons = {op.op_id: op.last_error or "" for op in queue.dead()}
    assert "no migration registered for 'notes' from schema v1" in reasons[missing.op_id]
    assert "KeyError('due')" in reasons[broken.op_id]
    assert "cannot decode" in reasons[garbage.op_id]
    assert all(op.error_kind == ErrorKind.PERMANENT for op in queue.dead())


def test_dead_lettered_migration_frees_the_next_op_of_its_item(queue: PrioritySyncQueue) -> None:
    """When an old op cannot be upgraded, the item's next op is leased in the same call."""
    queue.enqueue("notes", "a", encode({"v": 1}), schema_version=1, coalesce=False)
    newer = queue.enqueue("notes", "a", encode({"v": 2}), schema_version=2, coalesce=False)
    queue.set_schema_version("notes", 2)
    assert [op.op_id for op in queue.lease(10)] == [newer.op_id]


def test_upgrade_payload_is_pure_and_checks_step_results() -> None:
    """A step returning a non-dict is an error; an empty range re-encodes unchanged."""
    steps: dict[tuple[str, int], Any] = {("c", 1): lambda d: [d]}
    with pytest.raises(MigrationError, match="not a dict"):
        upgrade_payload(encode({}), collection="c", from_version=1, to_version=2, steps=steps)
    with pytest.raises(MigrationError, match="not a mapping"):
        upgrade_payload(
            encode([1]), collection="c", from_version=1, to_version=2, steps={("c", 1): dict}
        )
    same = upgrade_payload(encode({"a": 1}), collection="c", from_version=2, to_version=2, steps={})
    assert decode(same) == {"a": 1}
    assert issubclass(MigrationError, QueueError)


# -- introspection -------------------------------------------------------------------------------


def test_stats_count_per_priority_and_state(queue: PrioritySyncQueue, clock: FakeClock) -> None:
    """Counts per priority and state, blocked and backing-off ops, oldest live op's age."""
    a = queue.enqueue("notes", "a", b"x", priority=C)
    clock.advance(10)
    queue.enqueue("notes", "b", b"x", priority=N)
    queue.enqueue("tasks", "c", b"x", priority=L)
    queue.lease(1)  # a
    queue.enqueue("notes", "a", b"y", priority=N)  # waits behind a (raised to... C stays)
    d = queue.enqueue("tasks", "d", b"x", priority=H)
    queue.lease(1, priorities=[H])
    queue.nack(d.op_id, "bad", kind=ErrorKind.PERMANENT)
    e = queue.enqueue("tasks", "e", b"x", priority=H)
    queue.lease(1, priorities=[H])
    queue.nack(e.op_id, "503")
    clock.advance(1)
    stats = queue.stats()
    assert isinstance(stats, QueueStats)
    assert stats.counts[C] == {OpState.PENDING: 0, OpState.LEASED: 1, OpState.DEAD: 0}
    assert stats.counts[N][OpState.PENDING] == 2
    assert stats.counts[H] == {OpState.PENDING: 1, OpState.LEASED: 0, OpState.DEAD: 1}
    assert stats.counts[L][OpState.PENDING] == 1
    assert (stats.total, stats.pending, stats.leased, stats.dead) == (6, 4, 1, 1)
    assert (stats.blocked, stats.backing_off, stats.live) == (1, 1, 5)
    assert stats.oldest_pending_age == 11.0
    assert stats.count(priority=H) == 2
    assert stats.count(state=OpState.PENDING) == 4
    tasks = queue.stats("tasks")
    assert (tasks.collection, tasks.total, tasks.dead) == ("tasks", 3, 1)
    assert tasks.oldest_pending_age == 1.0
    queue.ack(a.op_id)
    assert PrioritySyncQueue(clock=clock).stats().oldest_pending_age is None


def test_pending_lists_live_ops_in_queue_order(queue: PrioritySyncQueue) -> None:
    """pending() filters by collection, item and state, in priority then FIFO order."""
    queue.enqueue("notes", "a", b"x", priority=L)
    queue.enqueue("notes", "b", b"x", priority=C)
    queue.enqueue("tasks", "c", b"x", priority=N)
    (leased,) = queue.lease(1)
    queue.nack(leased.op_id, "bad", kind=ErrorKind.PERMANENT)
    assert ids(queue.pending()) == ["c", "a"]
    assert ids(queue.pending("notes")) == ["a"]
    assert ids(queue.pending("notes", "b", states=[OpState.DEAD])) == ["b"]
    assert ids(queue.pending(states=["pending", "dead"], limit=2)) == ["b", "c"]
    assert queue.is_pending("notes", "a")
    assert not queue.is_pending("notes", "b")  # dead: not going to be sent
    assert not queue.is_pending("notes", "zzz")
    with pytest.raises(ValueError, match="collection"):
        queue.pending(item_id="a")


def test_next_eligible_at_tells_schedulers_when_to_wake(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """Now if an op is eligible, else the earliest backoff or lease end; None when empty."""
    assert queue.next_eligible_at() is None
    a = queue.enqueue("notes", "a", b"x", priority=L)
    assert queue.next_eligible_at() == clock.now()
    assert queue.next_eligible_at(priorities=[C, H, N]) is None
    queue.lease(10, lease_for=60)
    assert queue.next_eligible_at() == clock.now() + 60
    queue.nack(a.op_id, "503", retry_after=30)
    assert queue.next_eligible_at() == clock.now() + 30
    assert queue.next_eligible_at(priorities=[]) is None


async def _next_after_poll(stream: Any, clock: FakeClock, before: Any = None) -> Any:
    """Read the stream's next item, advancing the clock once the stream waits to poll."""
    got: list[Any] = []

    async def read() -> None:
        got.append(await anext(stream, None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        while clock.sleepers == 0:  # bounded by the caller's fail_after
            await anyio.lowlevel.checkpoint()
        if before is not None:
            before()
        clock.advance(1.0)
    return got[0]


@pytest.mark.anyio
async def test_stats_stream_yields_now_and_on_each_change(clock: FakeClock) -> None:
    """The stream yields the current stats, then new stats once a change is polled."""
    queue = PrioritySyncQueue(clock=clock)
    stream = queue.stats_stream(poll_interval=1.0)
    with anyio.fail_after(5):
        assert (await anext(stream)).total == 0
        queue.enqueue("notes", "a", b"x")
        assert (await _next_after_poll(stream, clock)).total == 1
        queue.enqueue("notes", "b", b"x", priority=C)
        changed = await _next_after_poll(stream, clock)
        assert changed.counts[C][OpState.PENDING] == 1
        assert await _next_after_poll(stream, clock, before=queue.close) is None


# -- transactions, durability, lifecycle --------------------------------------------------------


def test_enqueue_joins_the_callers_transaction(clock: FakeClock) -> None:
    """An enqueue inside a transaction that rolls back leaves no op behind."""
    db = Database(":memory:")
    queue = PrioritySyncQueue(db, clock=clock)
    db.execute("CREATE TABLE notes (id TEXT PRIMARY KEY)")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO notes VALUES ('a')")
        queue.enqueue("notes", "a", b"x")
        raise RuntimeError("the store failed after queueing")
    assert queue.pending() == []
    assert db.execute("SELECT count(*) FROM notes") == [(0,)]
    with db.transaction() as conn:
        conn.execute("INSERT INTO notes VALUES ('b')")
        queue.enqueue("notes", "b", b"x")
    assert ids(queue.pending()) == ["b"]
    queue.close()
    assert not db.closed  # a shared database belongs to its owner
    with pytest.raises(StoreClosedError):
        queue.enqueue("notes", "c", b"x")
    db.close()


def test_queue_survives_close_and_reopen(tmp_path: Path, clock: FakeClock) -> None:
    """Ops, their states, attempts and order are on disk after close and reopen."""
    path = tmp_path / "queue.db"
    with PrioritySyncQueue(path, clock=clock) as queue:
        a = queue.enqueue("notes", "a", b"1", priority=L)
        b = queue.enqueue("notes", "b", b"2", priority=C)
        queue.enqueue("notes", "c", b"3", priority=N)
        queue.lease(1, lease_for=10)
        queue.nack(b.op_id, "503", retry_after=5)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with PrioritySyncQueue(path, clock=clock) as reopened:
        assert reopened.get(a.op_id) == a
        again = reopened.get(b.op_id)
        assert (again.attempts, again.last_error, again.state) == (1, "503", OpState.PENDING)
        assert ids(reopened.lease(10)) == ["c", "a"]
        clock.advance(5)
        assert ids(reopened.lease(10)) == ["b"]
        assert reopened.database.execute("PRAGMA synchronous") == [(2,)]


def test_closed_queue_raises_store_closed_error(queue: PrioritySyncQueue) -> None:
    """Every call after close() raises StoreClosedError; close is idempotent."""
    op = queue.enqueue("notes", "a", b"x")
    queue.close()
    queue.close()
    assert queue.closed
    calls: list[Callable[[], object]] = [
        partial(queue.enqueue, "notes", "b", b"x"),
        queue.lease,
        partial(queue.ack, [op.op_id]),
        partial(queue.nack, [op.op_id], "x"),
        partial(queue.release, [op.op_id]),
        partial(queue.get, op.op_id),
        queue.pending,
        queue.stats,
        queue.dead,
        queue.retry_dead,
        partial(queue.discard, [op.op_id]),
        partial(queue.is_pending, "notes", "a"),
        queue.next_eligible_at,
    ]
    for call in calls:
        with pytest.raises(StoreClosedError):
            call()


def test_closing_the_shared_database_closes_the_queue(clock: FakeClock) -> None:
    """A queue over a database its owner closed raises StoreClosedError too."""
    db = Database(":memory:")
    queue = PrioritySyncQueue(db, clock=clock)
    db.close()
    assert queue.closed
    with pytest.raises(StoreClosedError):
        queue.enqueue("notes", "a", b"x")


def test_bad_arguments_raise_typed_errors(queue: PrioritySyncQueue) -> None:
    """Wrong types and values raise ValueError (or OpNotFoundError) and change nothing."""
    bad_calls: list[Callable[[], object]] = [
        lambda: queue.enqueue("", "a", b"x"),
        lambda: queue.enqueue("x" * 64, "a", b"x"),
        lambda: queue.enqueue("notes", True, b"x"),
        lambda: queue.enqueue("notes", 1.5, b"x"),  # type: ignore[arg-type]
        lambda: queue.enqueue("notes", "a", None),
        lambda: queue.enqueue("notes", "a", "text"),  # type: ignore[arg-type]
        lambda: queue.enqueue("notes", "a", b"x", kind="merge"),  # type: ignore[arg-type]
        lambda: queue.enqueue("notes", "a", b"x", priority="urgent"),
        lambda: queue.enqueue("notes", "a", b"x", schema_version=0),
        lambda: queue.enqueue("notes", "a", b"x", base_version=-1),
        lambda: queue.enqueue("notes", "a", b"x", hlc=""),
        lambda: queue.enqueue("notes", "a", b"x", hlc="h" * 65),  # longer than the wire takes
        lambda: queue.lease(0),
        lambda: queue.lease(10, lease_for=0),
        lambda: queue.lease(10, lease_for=float("inf")),
        lambda: queue.nack(["a"], "x", retry_after=-1),
        lambda: queue.ack(["a"], versions={"a": -1}),
        lambda: queue.ack([1]),  # type: ignore[list-item]
        lambda: queue.pending(limit=-1),
        lambda: queue.register_migration("notes", 0, dict),
        lambda: queue.set_schema_version("notes", 0),
        lambda: PrioritySyncQueue(max_attempts=0),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    assert queue.pending() == []
    with pytest.raises(OpNotFoundError) as info:
        queue.get("no-such-op")
    assert isinstance(info.value, KeyError)


def test_corrupt_file_and_foreign_table_give_typed_errors(tmp_path: Path) -> None:
    """A non-SQLite file raises CorruptDatabaseError; an alien nx_queue raises SchemaError."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 200)
    with pytest.raises(CorruptDatabaseError):
        PrioritySyncQueue(junk)
    alien = tmp_path / "alien.db"
    conn = sqlite3.connect(alien)
    conn.execute("CREATE TABLE nx_queue (id INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="nx_queue"):
        PrioritySyncQueue(alien)


# -- the index -----------------------------------------------------------------------------------


def test_lease_reads_the_eligible_index_not_the_table(queue: PrioritySyncQueue) -> None:
    """EXPLAIN QUERY PLAN: every lease statement searches an index; none scans the table."""
    db = queue.database
    plans = []
    for statement, params in [
        (_LEASE, (1.0, 0.0, 2, 100)),
        (_PROMOTE, (0.0,)),
        (_DELETE_MANY, ('["a", "b"]',)),
    ]:
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement, params))
        plans.append(plan)
    assert "USING INDEX nx_queue_eligible (priority=?)" in plans[0]
    assert "TEMP B-TREE" not in plans[0]  # the index yields rows in serving order
    assert "USING INDEX nx_queue_delayed" in plans[1]
    assert "INDEX sqlite_autoindex_nx_queue_1 (op_id=?)" in plans[2]
    assert "SEARCH l USING INTEGER PRIMARY KEY" in plans[0]  # lease state: one probe per op
    scans = ("SCAN nx_queue", "SCAN q", "SCAN l")
    assert not any(part.startswith(scans) for p in plans for part in p.split(" | "))


def _lease_steps(queue: PrioritySyncQueue) -> int:
    """SQLite VM steps (in units of 100) spent by one lease of 50 ops."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    queue.database.conn.set_progress_handler(count, 100)
    try:
        assert len(queue.lease(50)) == 50
    finally:
        queue.database.conn.set_progress_handler(None, 100)
    return steps


def test_lease_cost_does_not_grow_with_the_queue(clock: FakeClock) -> None:
    """Leasing 50 ops costs the same with 1k or 20k ops queued (also 20k backing off)."""
    small = PrioritySyncQueue(clock=clock)
    big = PrioritySyncQueue(clock=clock)
    for queue, count in [(small, 1_000), (big, 20_000)]:
        with queue.database.transaction():
            for i in range(count):
                queue.enqueue("notes", i, b"x", priority=SyncPriority(i % 4))
    backing_off = [op.op_id for op in big.lease(20_000 - 100)]
    big.nack(backing_off, "503", retry_after=3600)
    small_steps, big_steps = _lease_steps(small), _lease_steps(big)
    assert big_steps <= small_steps * 1.5 + 5
