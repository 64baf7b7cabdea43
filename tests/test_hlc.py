"""Hybrid logical clock stamps sort causally even when wall time goes backwards."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store._hlc import ClockReading, HybridLogicalClock, parse_stamp, restamped, stamp_limit
from nexus_store.testing import FakeClock


def test_stamps_increase_when_wall_time_stands_still_or_goes_back() -> None:
    """Stamps issued by one clock strictly increase."""
    clock = FakeClock(start=1000.0)
    hlc = HybridLogicalClock("a", clock=clock)
    first, second = hlc.now(), hlc.now()
    clock.set(900.0)
    third = hlc.now()
    assert first < second < third


def test_observe_moves_past_a_remote_stamp() -> None:
    """After observing a later remote stamp, local stamps sort after it."""
    clock = FakeClock(start=1000.0)
    local = HybridLogicalClock("a", clock=clock)
    remote = HybridLogicalClock("b", clock=FakeClock(start=5000.0))
    stamp = remote.now()
    local.observe(stamp)
    assert local.now() > stamp


def test_parse_and_reject() -> None:
    """parse_stamp splits valid stamps and rejects others; node ids cannot hold '-'."""
    assert parse_stamp("0000000001000-00001-node") == (1000, 1, "node")
    with pytest.raises(ValueError, match="stamp"):
        parse_stamp("12-1-x")
    with pytest.raises(ValueError, match="node"):
        HybridLogicalClock("a-b")


# -- bounded skew -------------------------------------------------------------------------

T = 1_700_000_000.0


def reading(server: float, local: float, bound: float | None = 300.0) -> ClockReading:
    return ClockReading(server_time=server, local_time=local, max_offset=bound)


def test_a_clock_within_the_bound_only_observes_the_server() -> None:
    """Within the bound a clock keeps its time and sorts after the server's (receive rule)."""
    clock = FakeClock(start=T)
    hlc = HybridLogicalClock("a", clock=clock)
    assert hlc.observe_clock(reading(T + 100, T)) is None
    assert hlc.offset == 0.0
    assert parse_stamp(hlc.now())[0] == int((T + 100) * 1000)  # not behind the server
    clock.advance(200)
    assert parse_stamp(hlc.now())[:2] == (int((T + 200) * 1000), 0)


def test_a_slow_clock_beyond_the_bound_stamps_with_the_server_time() -> None:
    """A clock a day slow stamps with the server's time, following it as time passes."""
    clock = FakeClock(start=T - 86_400)
    hlc = HybridLogicalClock("a", clock=clock)
    assert hlc.observe_clock(reading(T, T - 86_400)) == -86_400
    assert hlc.offset == 86_400
    clock.advance(60)
    assert parse_stamp(hlc.now())[:2] == (int((T + 60) * 1000), 0)


def test_a_fast_clock_beyond_the_bound_drops_its_own_future_stamps() -> None:
    """A clock a day fast stops stamping in the future, but never below what it observed."""
    clock = FakeClock(start=T + 86_400)
    hlc = HybridLogicalClock("a", clock=clock)
    future = hlc.now()
    hlc.observe(f"{int((T - 5) * 1000):013d}-00007-b")  # seen from another device
    assert hlc.observe_clock(reading(T, T + 86_400)) == 86_400
    stamp = hlc.now()
    assert stamp < future
    assert parse_stamp(stamp)[:2] == (int(T * 1000), 1)  # just after the server's time
    clock.advance(1)
    assert parse_stamp(hlc.now())[:2] == (int((T + 1) * 1000), 0)


def test_the_clock_goes_back_to_its_own_time_once_right() -> None:
    """A reading within the bound again ends the correction."""
    clock = FakeClock(start=T - 86_400)
    hlc = HybridLogicalClock("a", clock=clock)
    hlc.observe_clock(reading(T, T - 86_400))
    clock.set(T + 10)  # the user set the clock right
    assert hlc.observe_clock(reading(T + 10, T + 10)) is None
    assert hlc.offset == 0.0


def test_stamps_far_beyond_the_bound_are_not_observed() -> None:
    """Once a bound is known, a stamp from beyond it does not drag the clock along."""
    clock = FakeClock(start=T)
    hlc = HybridLogicalClock("a", clock=clock)
    hlc.observe_clock(reading(T, T))
    hlc.observe(f"{int((T + 86_400) * 1000):013d}-00000-b")
    assert parse_stamp(hlc.now())[0] == int(T * 1000)
    hlc.observe(f"{int((T + 60) * 1000):013d}-00000-b")
    assert parse_stamp(hlc.now())[0] == int((T + 60) * 1000)


def test_skew_is_measured_on_the_clock_that_stamps() -> None:
    """A reading taken on another clock: the skew is this clock's own against the server's."""
    clock = FakeClock(start=T - 86_400)
    hlc = HybridLogicalClock("a", clock=clock)
    assert hlc.observe_clock(reading(T, T)) == -86_400  # the backend's clock was right


def test_skew_and_bound_of_a_reading() -> None:
    """skew is local minus server; beyond_bound needs a known bound."""
    assert reading(T, T + 301).beyond_bound
    assert not reading(T, T + 300).beyond_bound
    assert reading(T, T - 301).skew == -301
    assert not reading(T, T + 10**6, None).beyond_bound


@given(
    st.integers(0, 10**13 - 1),
    st.integers(0, 10**13 - 1),
    st.integers(0, 99_999),
    st.text(min_size=1, max_size=12).filter(lambda n: "-" not in n),
)
def test_stamp_limit_orders_like_the_millis(
    limit: int, millis: int, counter: int, node: str
) -> None:
    """stamp > stamp_limit(m) exactly when its millis exceed m; restamped keeps the rest."""
    stamp = f"{millis:013d}-{counter:05d}-{node}"
    assert (stamp > stamp_limit(limit)) == (millis > limit)
    assert parse_stamp(restamped(stamp, limit)) == (limit, counter, node)
