"""The transfer step renews the leases of what runs; a renewal that finds an op no longer
held stops that transfer, unless the transfer had ended (its op was settled between the
listing and the renewal: nothing was lost, and nothing is said)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from nexus_store.queue._fencing import Settled
from nexus_store.sync.engine._transfers import Transfers, _Running

pytestmark = pytest.mark.anyio


class _Clock:
    def __init__(self) -> None:
        self.sleeps = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        await anyio.lowlevel.checkpoint()


class _Runner:
    lease_for = 30.0

    def __init__(self) -> None:
        self.clock = _Clock()

    async def _local(self, fn: Any, *args: Any) -> Any:
        result = fn(*args)
        await anyio.lowlevel.checkpoint()
        if isinstance(fn.__self__, _Side):
            fn.__self__.renewed.set()
        return result


class _Side:
    """Every op asked for is no longer held (acked by now, or taken by another run)."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.renewed = anyio.Event()

    def renew(self, op_ids: list[str], lease_for: float, token: int) -> Settled:
        self.asked.append(list(op_ids))
        return Settled(0, op_ids)


def _job(op_id: str, *, ended: bool) -> _Running:
    op = type("Op", (), {"op_id": op_id})()
    return _Running(op, None, 7, 0.0, 0, ended=ended)  # type: ignore[arg-type]


async def test_a_renewal_stops_a_running_transfer_it_lost_but_not_an_ended_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = _Runner()
    step = Transfers(runner, run=None, sides=[])  # type: ignore[arg-type]
    ended, live = _job("ended", ended=True), _job("live", ended=False)
    running = {"ended": ended, "live": live}
    side = _Side()
    with caplog.at_level(logging.WARNING, logger="nexus_store"):
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(step._renew, side, running)
                await side.renewed.wait()
                group.cancel_scope.cancel()
    assert side.asked[0] == ["ended", "live"], "an ended transfer keeps its lease until settled"
    assert live.scope.cancel_called
    assert not ended.scope.cancel_called
    lost = [r.getMessage() for r in caplog.records if "lost its lease" in r.getMessage()]
    assert lost == ["transfer live lost its lease: stopped"]
