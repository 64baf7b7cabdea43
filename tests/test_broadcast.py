"""Broadcast streams: every subscriber sees every item, in order."""

from __future__ import annotations

import anyio
import pytest

from nexus_store._broadcast import Broadcast

pytestmark = pytest.mark.anyio


async def test_every_subscriber_sees_every_item_in_order() -> None:
    """Two subscribers, one slow, each receive the full sequence; close ends both."""
    stream: Broadcast[int] = Broadcast()
    fast, slow = stream.subscribe(), stream.subscribe()
    got: dict[str, list[int]] = {"fast": [], "slow": []}

    async def read(name: str, sub: object) -> None:
        async for item in sub:  # type: ignore[attr-defined]
            got[name].append(item)
            if name == "slow":
                await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, "fast", fast)
            tg.start_soon(read, "slow", slow)
            for i in range(100):
                stream.publish(i)
                if i % 7 == 0:
                    await anyio.lowlevel.checkpoint()
            stream.close()
    assert got["fast"] == list(range(100))
    assert got["slow"] == list(range(100))


async def test_replay_last_and_callbacks() -> None:
    """A late subscriber gets the latest item with replay_last; callbacks run until removed."""
    stream: Broadcast[str] = Broadcast(replay_last=True)
    seen: list[str] = []
    remove = stream.add_callback(seen.append)
    stream.publish("idle")
    stream.publish("running")
    late = stream.subscribe()
    remove()
    stream.publish("completed")
    stream.close()
    with anyio.fail_after(5):
        assert [item async for item in late] == ["running", "completed"]
    assert seen == ["idle", "running"]
    assert stream.last == "completed"


async def test_closed_subscription_stops_receiving() -> None:
    """After close() a subscription keeps its buffered items and gets no more."""
    stream: Broadcast[int] = Broadcast()
    sub = stream.subscribe()
    stream.publish(1)
    sub.close()
    stream.publish(2)
    with anyio.fail_after(5):
        assert [item async for item in sub] == [1]
    stream.close()
    after = stream.subscribe()
    with anyio.fail_after(5):
        assert [item async for item in after] == []
