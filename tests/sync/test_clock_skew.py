"""A device's wrong clock no longer decides conflicts: bounded skew, end to end over HTTP.

Two devices edit one note concurrently, round after round; the edit made later (in true
time) should win. One device's wall clock is a day fast or a day slow. The server and
both devices run in this process on one :class:`FakeClock` (the skewed device reads it
through a :class:`SkewedClock`), and talk over HTTP to the real ASGI app (httpx's ASGI
transport), so the clock headers, the server's re-stamping and the clients' HLC all take
part.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from pydantic import BaseModel

from nexus_store import NexusStore
from nexus_store.backends import HttpBackend
from nexus_store.server import StaticTokenVerifier, create_app
from nexus_store.server._core import ServerCore
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.sync import SyncSummary
from nexus_store.testing import FakeClock, SkewedClock

pytestmark = pytest.mark.anyio

DAY = 86_400.0
ROUNDS = 20


class Note(BaseModel):
    id: str
    text: str


@dataclass
class Device:
    """A simulated device: its store and its connection to the server."""

    name: str
    store: NexusStore[Note, str]
    backend: HttpBackend

    async def sync(self) -> SyncSummary:
        return await self.store.async_sync(backend=self.backend)

    def edit(self, text: str) -> None:
        self.store.save(Note(id="doc", text=text))


@asynccontextmanager
async def world(
    skew: float, *, max_clock_offset: float
) -> AsyncIterator[tuple[FakeClock, ServerCore, Device, Device]]:
    """A server, a device with a right clock and one ``skew`` seconds off, on one fake time."""
    true_time = FakeClock()
    core = ServerCore(MemoryStorage(), clock=true_time, max_clock_offset=max_clock_offset)
    app = create_app(core, verifier=StaticTokenVerifier({"tok": "skew"}))
    devices = []
    for name, clock in (("right", true_time), ("skewed", SkewedClock(true_time, skew))):
        store: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
        backend = HttpBackend(
            "http://sync.test", token="tok", transport=httpx.ASGITransport(app), clock=clock
        )
        devices.append(Device(name, store, backend))
    try:
        yield true_time, core, devices[0], devices[1]
    finally:
        for device in devices:
            await device.backend.aclose()
            device.store.close()
        await core.aclose()


async def play(skew: float, *, max_clock_offset: float = 300.0) -> tuple[int, int, int]:
    """Play the rounds; return (edits lost to skew, skewed device's wins, divergent states)."""
    async with world(skew, max_clock_offset=max_clock_offset) as (clock, _, right, skewed):
        right.edit("start")
        await right.sync()
        await skewed.sync()  # the skewed device sees the server's clock once
        clock.advance(10.0)
        lost = skewed_wins = 0
        for round_ in range(ROUNDS):
            # Both edit the same version of the note, one second apart in true time.
            first, later = (right, skewed) if round_ % 2 == 0 else (skewed, right)
            first.edit(f"{round_}: {first.name}")
            clock.advance(1.0)
            later.edit(f"{round_}: {later.name}")
            clock.advance(1.0)
            # Either order of arrival; then both pull what the server kept.
            order = (first, later) if round_ % 4 < 2 else (later, first)
            for device in (*order, *order):
                await device.sync()
            clock.advance(10.0)
            kept = right.store.get("doc")
            assert kept is not None
            lost += kept.text != f"{round_}: {later.name}"
            skewed_wins += kept.text.endswith(skewed.name)
        changes = (await right.backend.pull(0)).changes
        divergent = sum(
            device.store.get("doc") != Note.model_validate(changes[-1].data)
            for device in (right, skewed)
        )
    return lost, skewed_wins, divergent


@pytest.mark.parametrize("skew", [DAY, -DAY], ids=["a day fast", "a day slow"])
async def test_a_skewed_clock_loses_no_edit(skew: float) -> None:
    """With the server's bound, the later edit wins every round whichever clock is wrong."""
    lost, skewed_wins, divergent = await play(skew)
    print(f"\nclock {skew:+.0f} s: edits lost to skew {lost}/{ROUNDS}, won {skewed_wins}")
    assert lost == 0
    assert skewed_wins == ROUNDS // 2
    assert divergent == 0


@pytest.mark.parametrize("skew", [DAY, -DAY], ids=["a day fast", "a day slow"])
async def test_without_a_bound_the_wrong_clock_decides(skew: float) -> None:
    """The same rounds with the bound out of reach: the wrong clock decides every conflict."""
    lost, skewed_wins, _ = await play(skew, max_clock_offset=100 * 365 * DAY)
    assert lost == ROUNDS // 2
    assert skewed_wins == (ROUNDS if skew > 0 else 0)


async def test_the_skewed_device_is_told(caplog: pytest.LogCaptureFixture) -> None:
    """A clock off beyond the bound shows in every run's summary and event, and in one log line."""
    async with world(DAY, max_clock_offset=300) as (clock, _, right, skewed):
        summaries = []
        for _ in range(3):
            with caplog.at_level(logging.WARNING, logger="nexus_store.backends"):
                skewed.edit("x")
                summaries.append(await skewed.sync())
                clock.advance(5)
        right_summary = await right.sync()
    assert [s.clock_skew for s in summaries] == [pytest.approx(DAY)] * 3
    assert "ahead of the server's" in summaries[0].message()
    assert right_summary.clock_skew is None
    warnings = [r for r in caplog.records if r.name == "nexus_store.backends"]
    assert len(warnings) == 1
    assert "ahead of" in warnings[0].getMessage()


async def test_ops_from_before_the_device_learned_are_re_stamped() -> None:
    """A fast device's first writes (before any answer) reach the server stamped with its time."""
    async with world(DAY, max_clock_offset=300) as (clock, core, right, skewed):
        skewed.edit("written offline, a day in the future")
        await skewed.sync()
        assert core.restamped == 1
        clock.advance(1)
        right.store.save(Note(id="doc", text="written later, right clock"))
        await right.sync()  # a stale write with a later (true) stamp: it wins
        await skewed.sync()
        kept = skewed.store.get("doc")
    assert kept is not None
    assert kept.text == "written later, right clock"
