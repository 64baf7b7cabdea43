"""Hybrid logical clock stamps sort causally even when wall time goes backwards."""

from __future__ import annotations

import pytest

from nexus_store import FakeClock
from nexus_store._hlc import HybridLogicalClock, parse_stamp


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
