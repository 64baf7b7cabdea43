"""FakeClock: sleepers wake only when the clock is moved, in deadline order."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from nexus_store import Clock, SystemClock
from nexus_store.testing import FakeClock

pytestmark = pytest.mark.anyio


async def test_sleepers_wake_in_deadline_order() -> None:
    """advance() wakes exactly the sleepers whose deadline has come, earliest first."""
    clock = FakeClock(start=100.0)
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for seconds in (30.0, 10.0, 20.0):
                tg.start_soon(sleeper, seconds)
            while clock.sleepers < 3:
                await anyio.lowlevel.checkpoint()
            assert clock.next_deadline() == 110.0
            clock.advance(15)
            while not woke:
                await anyio.lowlevel.checkpoint()
            assert woke == [10.0]
            clock.advance(100)
    assert woke == [10.0, 20.0, 30.0]
    assert clock.now() == 215.0


async def test_zero_sleep_returns_at_once() -> None:
    """A non-positive sleep does not wait for the clock."""
    clock = FakeClock()
    with anyio.fail_after(1):
        await clock.sleep(0)
        await clock.sleep(-5)


def test_advance_rejects_negative_and_set_may_jump_back() -> None:
    """advance() only goes forward; set() can move the wall clock back."""
    clock = FakeClock(start=50.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    clock.set(10.0)
    assert clock.now() == 10.0
    assert clock.monotonic() == 10.0


def test_clocks_satisfy_the_protocol() -> None:
    """Both clocks are Clocks."""
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)
