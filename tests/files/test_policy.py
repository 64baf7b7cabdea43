"""The file policy's decisions, as plain functions: which constraints apply, what a device
leaves unmet, how a failed transfer is nacked (backoff schedule, max attempts)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from nexus_store import ErrorKind, RetryBackoff, SyncPriority
from nexus_store.files import FilePolicy, TransferConstraints
from nexus_store.files._policy import effective_constraints, plan_transfer_failure, unmet

constraints = st.builds(TransferConstraints, st.booleans(), st.booleans(), st.booleans())


@dataclass
class Device:
    metered: bool = False
    temporarily_unmetered: bool = False
    charging: bool = True
    battery_low: bool = False


devices = st.builds(Device, st.booleans(), st.booleans(), st.booleans(), st.booleans())


@given(constraints, st.sampled_from(list(SyncPriority)), st.integers(0, 10**12), constraints)
def test_constraints_only_add_up(
    own: TransferConstraints, priority: SyncPriority, size: int, low: TransferConstraints
) -> None:
    """An op's constraints are its own plus its priority's plus the large files' (for a
    large file): never fewer than its own."""
    policy = FilePolicy(per_priority={SyncPriority.LOW: low}, large_file_bytes=1000)
    result = effective_constraints(own, priority, size, policy)
    for name in ("unmetered", "charging", "battery_not_low"):
        assert getattr(result, name) >= getattr(own, name)
    if priority is SyncPriority.LOW:
        assert result == result | low
    assert result.unmetered or size < 1000 or not policy.large_file.unmetered


@given(constraints, devices)
def test_unmet_says_why_exactly_when_a_constraint_fails(
    wanted: TransferConstraints, device: Device
) -> None:
    """A reason is given iff some constraint is not met by the device; no device: none."""
    failing = (
        (wanted.unmetered and device.metered and not device.temporarily_unmetered)
        or (wanted.charging and not device.charging)
        or (wanted.battery_not_low and device.battery_low)
    )
    assert (unmet(wanted, device) is not None) == failing
    assert unmet(wanted, None) is None


def test_the_30_60_120_schedule_then_dead_letter() -> None:
    """The seed's schedule is expressible: waits of 30, 60, 120, 120 s, then a dead letter
    with the reason after max_attempts."""
    policy = FilePolicy(
        backoff=RetryBackoff(base=30, factor=2, max_delay=120, jitter=False), max_attempts=5
    )
    waits = [
        plan_transfer_failure(
            kind=ErrorKind.RETRYABLE, reason="503", attempts=n, retry_after=None, policy=policy
        ).retry_after
        for n in range(4)
    ]
    assert waits == [30, 60, 120, 120]
    last = plan_transfer_failure(
        kind=ErrorKind.RETRYABLE, reason="503", attempts=4, retry_after=None, policy=policy
    )
    assert last.kind is ErrorKind.PERMANENT
    assert "gave up after 5 attempts: 503" in last.reason


@given(st.integers(0, 50), st.floats(0, 10_000) | st.none())
def test_a_server_retry_after_is_never_shortened(attempts: int, retry_after: float | None) -> None:
    """The wait is at least what the server asked for."""
    policy = FilePolicy(backoff=RetryBackoff(base=1, max_delay=60, jitter=False))
    plan = plan_transfer_failure(
        kind=ErrorKind.RETRYABLE,
        reason="busy",
        attempts=attempts,
        retry_after=retry_after,
        policy=policy,
    )
    assert plan.retry_after is not None
    assert plan.retry_after >= (retry_after or 0.0)
