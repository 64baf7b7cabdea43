"""Server limits as pure decisions: sizes, rates, and the per-tenant token bucket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store.server._limits import (
    Bucket,
    Limits,
    RateLimiter,
    parse_rate,
    parse_size,
    retry_after_header,
    take_token,
)
from nexus_store.testing import FakeClock


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("512k", 512_000),
        ("8MiB", 8 * 1024**2),
        ("1.5MB", 1_500_000),
        ("2 kib", 2048),
    ],
)
def test_parse_size_reads_units(text: str, size: int) -> None:
    """Sizes are bytes with optional SI or binary units."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "5 parsecs", "0", "-1k"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    """Unreadable or non-positive sizes are refused with ValueError."""
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("20", 20.0), ("20/s", 20.0), ("600/min", 10.0), ("3600/h", 1.0), ("0.5", 0.5)],
)
def test_parse_rate_reads_periods(text: str, rate: float) -> None:
    """Rates are requests per second, per second/minute/hour."""
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["", "fast", "10/day", "0/s"])
def test_parse_rate_refuses_nonsense(text: str) -> None:
    """Unreadable or zero rates are refused with ValueError."""
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_limits_validate_and_default_burst() -> None:
    """Limits refuse non-positive values; the burst defaults to one second's worth."""
    assert Limits(rate=5).effective_burst == 5
    assert Limits(rate=0.2).effective_burst == 1
    assert Limits(rate=5, burst=2).effective_burst == 2
    for bad in ({"max_body_bytes": 0}, {"max_batch_ops": 0}, {"rate": 0}, {"burst": 0.5}):
        with pytest.raises(ValueError, match="must be"):
            Limits(**bad)


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    """Retry-After rounds the wait up to whole seconds, never 0."""
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"


def test_bucket_admits_a_burst_then_asks_to_wait() -> None:
    """A full bucket admits `burst` requests at once, then tells how long to wait."""
    bucket = None
    for _ in range(3):
        bucket, wait = take_token(bucket, 100.0, rate=2.0, burst=3)
        assert wait == 0.0
    bucket, wait = take_token(bucket, 100.0, rate=2.0, burst=3)
    assert wait == pytest.approx(0.5)
    bucket, wait = take_token(bucket, 100.5, rate=2.0, burst=3)
    assert wait == 0.0


@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=60),
)
def test_bucket_never_admits_more_than_burst_plus_refill(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Over any request pattern, admitted <= burst + rate * elapsed, and a told wait is honest."""
    bucket: Bucket | None = None
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        bucket, wait = take_token(bucket, now, rate=rate, burst=burst)
        if wait == 0.0:
            admitted += 1
        else:
            _, later = take_token(bucket, now + wait + 1e-9, rate=rate, burst=burst)
            assert later == 0.0
        assert admitted <= burst + rate * now + 1e-6


def test_rate_limiter_keeps_tenants_apart() -> None:
    """One tenant spending its budget does not limit another."""
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    assert [limiter.check("a") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.check("a") > 0
    assert limiter.check("b") == 0.0
    clock.advance(1.0)
    assert limiter.check("a") == 0.0
