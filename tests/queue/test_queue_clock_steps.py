"""Steps of the wall clock (NTP, a laptop resuming, a user fixing the date) stall nothing.

The clock is a FakeClock whose wall time is stepped with ``step()`` (monotonic time does not
move), as the real clock is; the whole-process variant under libfaketime is in
``tests/sync/test_clock_steps_process.py``.
"""

from __future__ import annotations

import pytest

from nexus_store import ErrorKind
from nexus_store._backoff import RetryBackoff
from nexus_store.queue import PrioritySyncQueue
from nexus_store.testing import FakeClock

HOUR = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a round time."""
    return FakeClock(1_000_000.0)


@pytest.fixture
def queue(clock: FakeClock) -> PrioritySyncQueue:
    """A queue whose backoff is exactly ``10 * 2**(n-1)`` seconds (no jitter)."""
    return PrioritySyncQueue(clock=clock, backoff=RetryBackoff(10.0, jitter=False))


@pytest.mark.parametrize("step", [-5.0, -HOUR, -30 * 24 * HOUR, HOUR])
def test_ops_that_never_failed_are_eligible_after_any_step(
    queue: PrioritySyncQueue, clock: FakeClock, step: float
) -> None:
    """100 ops queued, the clock stepped (back or forward): every one is leased at once."""
    for n in range(100):
        queue.enqueue("notes", f"n{n}", b"x")
    clock.step(step)
    assert queue.next_eligible_at() is not None
    assert queue.next_eligible_at() <= clock.now()  # type: ignore[operator]
    assert len(queue.lease(500)) == 100
    assert queue.stats().backing_off == 0


def test_a_backoff_keeps_its_length_when_the_clock_steps_back(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """An op backing off 10 s when the clock goes back an hour waits 10 s, not an hour."""
    op = queue.enqueue("notes", "a", b"x")
    (leased,) = queue.lease(1)
    queue.nack(leased.op_id, "down", kind=ErrorKind.RETRYABLE)
    clock.advance(4)
    clock.step(-HOUR)
    when = queue.next_eligible_at()
    assert when is not None
    # At most the wait it was set with (the 4 s that passed before the step are unknown
    # to the file: the watermark is the time of the last deadline set).
    assert 6.0 <= when - clock.now() <= 10.0
    assert queue.stats().backing_off == 1
    assert queue.lease(1) == []
    clock.advance(10)
    assert queue.next_eligible_at() <= clock.now()  # type: ignore[operator]
    assert [o.op_id for o in queue.lease(1)] == [op.op_id]


def test_a_lease_keeps_its_length_when_the_clock_steps_back(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """A 30 s lease when the clock goes back an hour ends 30 s later, not an hour later."""
    queue.enqueue("notes", "a", b"x")
    batch = queue.lease(1, 30.0)
    clock.step(-HOUR)
    when = queue.next_eligible_at()
    assert when is not None
    assert 0 < when - clock.now() <= 30.0
    assert queue.lease(1) == []
    clock.advance(30)
    again = queue.lease(1, 30.0)
    assert [o.op_id for o in again] == [o.op_id for o in batch]
    assert queue.ack([batch[0].op_id], token=batch.token).stale == (batch[0].op_id,)


def test_a_step_forward_then_back_leaves_no_deadline_in_the_future(
    queue: PrioritySyncQueue, clock: FakeClock
) -> None:
    """Deadlines set while the clock ran an hour fast keep their length after the fix."""
    queue.enqueue("notes", "a", b"x")
    clock.step(HOUR)
    (leased,) = queue.lease(1)
    queue.nack(leased.op_id, "down")  # backs off 10 s on the fast clock
    clock.step(-HOUR)
    when = queue.next_eligible_at()
    assert when is not None
    assert when - clock.now() <= 10.0
    clock.advance(10)
    assert len(queue.lease(1)) == 1


def test_a_step_back_is_noticed_by_another_queue_on_the_file(
    tmp_path: pytest.TempPathFactory, clock: FakeClock
) -> None:
    """A second process (another queue object on the file) sees the same shortened waits."""
    path = f"{tmp_path}/q.db"
    first = PrioritySyncQueue(path, clock=clock, backoff=RetryBackoff(10.0, jitter=False))
    first.enqueue("notes", "a", b"x")
    (leased,) = first.lease(1)
    first.nack(leased.op_id, "down")
    first.close()
    later = FakeClock(clock.now() - HOUR)
    second = PrioritySyncQueue(path, clock=later)
    try:
        when = second.next_eligible_at()
        assert when is not None
        assert when - later.now() <= 10.0
        later.advance(10)
        assert len(second.lease(1)) == 1
    finally:
        second.close()


def test_deadlines_move_at_most_once_per_step(queue: PrioritySyncQueue, clock: FakeClock) -> None:
    """After the step was noticed, later leases do not shorten waits again."""
    queue.enqueue("notes", "a", b"x")
    queue.enqueue("notes", "b", b"x")
    (first, _) = queue.lease(2)
    queue.nack(first.op_id, "down")  # 10 s
    clock.step(-HOUR)
    queue.lease(1)  # notices the step
    clock.advance(5)
    queue.lease(1)
    when = queue.next_eligible_at()
    assert when is not None
    assert when - clock.now() == pytest.approx(5.0)
