"""Backoff delays and the fate of a failed op: pure decisions, plain inputs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store import ErrorKind
from nexus_store._backoff import RetryBackoff, plan_failure


def test_ceiling_grows_exponentially_up_to_the_cap() -> None:
    """The ceiling is base * factor**(n-1), capped at max_delay, even for huge n."""
    policy = RetryBackoff(base=2.0, factor=3.0, max_delay=100.0)
    assert [policy.ceiling(n) for n in range(1, 6)] == [2.0, 6.0, 18.0, 54.0, 100.0]
    assert policy.ceiling(10_000) == 100.0
    assert RetryBackoff(base=5.0, factor=1.0, max_delay=5.0).ceiling(50) == 5.0


def test_full_jitter_scales_the_ceiling_by_the_random_draw() -> None:
    """With jitter the delay is ceiling * random(); without it, the ceiling."""
    draws = iter([0.0, 0.5, 0.999])
    policy = RetryBackoff(base=10.0, factor=2.0, max_delay=1000.0, random=lambda: next(draws))
    assert policy.delay(1) == 0.0
    assert policy.delay(2) == 10.0
    assert policy.delay(3) == pytest.approx(39.96)
    assert RetryBackoff(base=10.0, jitter=False).delay(3) == 40.0


@given(attempts=st.integers(min_value=1, max_value=500), draw=st.floats(0.0, 0.999999))
def test_jittered_delay_stays_within_bounds(attempts: int, draw: float) -> None:
    """A jittered delay is never negative and never above the ceiling or max_delay."""
    policy = RetryBackoff(base=0.5, factor=2.0, max_delay=600.0, random=lambda: draw)
    delay = policy.delay(attempts)
    assert 0.0 <= delay <= policy.ceiling(attempts) <= 600.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0.0},
        {"base": -1.0},
        {"factor": 0.5},
        {"base": 10.0, "max_delay": 5.0},
        {"base": float("nan")},
    ],
)
def test_bad_policy_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    """Non-positive base, factor below 1 or max_delay below base are refused."""
    with pytest.raises(ValueError):
        RetryBackoff(**kwargs)


def test_ceiling_needs_at_least_one_attempt() -> None:
    """Asking for the delay after zero failures is a bug in the caller."""
    with pytest.raises(ValueError, match="attempts"):
        RetryBackoff().ceiling(0)


@pytest.mark.parametrize("kind", [ErrorKind.PERMANENT, ErrorKind.CONFLICT])
def test_permanent_and_conflict_dead_letter_at_once(kind: ErrorKind) -> None:
    """A permanent error or an unresolved conflict dead-letters on the first failure."""
    plan = plan_failure(
        attempts=0, max_attempts=10, kind=kind, now=100.0, retry_after=None, policy=RetryBackoff()
    )
    assert plan.dead
    assert plan.attempts == 1


def test_retryable_failures_back_off_until_max_attempts() -> None:
    """Retryable failures wait, and dead-letter when attempts reach the maximum."""
    policy = RetryBackoff(base=4.0, jitter=False)
    kind = ErrorKind.RETRYABLE
    plan = plan_failure(
        attempts=1, max_attempts=3, kind=kind, now=100.0, retry_after=None, policy=policy
    )
    assert (plan.dead, plan.attempts, plan.next_attempt_at) == (False, 2, 108.0)
    last = plan_failure(
        attempts=2, max_attempts=3, kind=kind, now=100.0, retry_after=None, policy=policy
    )
    assert last.dead
    assert last.attempts == 3


@given(attempts=st.integers(0, 50), retry_after=st.none() | st.floats(0.0, 1e6))
def test_auth_failures_never_count_or_dead_letter(attempts: int, retry_after: float | None) -> None:
    """Refused credentials count no attempt, never dead-letter, and wait only a Retry-After."""
    plan = plan_failure(
        attempts=attempts,
        max_attempts=3,
        kind=ErrorKind.AUTH,
        now=100.0,
        retry_after=retry_after,
        policy=RetryBackoff(),
    )
    assert (plan.dead, plan.attempts) == (False, attempts)
    assert plan.next_attempt_at == 100.0 + (retry_after or 0.0)


@given(
    retry_after=st.none() | st.floats(0.0, 1e6),
    draw=st.floats(0.0, 0.999999),
    attempts=st.integers(0, 20),
)
def test_wait_is_the_larger_of_retry_after_and_backoff(
    retry_after: float | None, draw: float, attempts: int
) -> None:
    """The next attempt is now + max(retry_after, jittered backoff)."""
    policy = RetryBackoff(base=1.0, factor=2.0, max_delay=300.0, random=lambda: draw)
    plan = plan_failure(
        attempts=attempts,
        max_attempts=100,
        kind=ErrorKind.RETRYABLE,
        now=1000.0,
        retry_after=retry_after,
        policy=policy,
    )
    expected = max(retry_after or 0.0, policy.delay(attempts + 1))
    assert plan.next_attempt_at == 1000.0 + expected
    assert plan.next_attempt_at >= 1000.0 + (retry_after or 0.0)
