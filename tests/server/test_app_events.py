"""The change notifier behind server-sent events: per-tenant pollers, pokes, shutdown."""

from __future__ import annotations

import anyio
import pytest

from nexus_store.server._events import ChangeNotifier, format_event

pytestmark = pytest.mark.anyio


class Heads:
    """Tenant heads the notifier polls, counting the reads."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.reads: dict[str, int] = {}

    async def __call__(self, tenant: str) -> int:
        self.reads[tenant] = self.reads.get(tenant, 0) + 1
        return self.values.get(tenant, 0)


def test_event_format() -> None:
    """An event is id, event name and JSON data, ended by a blank line."""
    assert format_event(7) == b'id: 7\nevent: head\ndata: {"head": 7}\n\n'


async def test_listener_sees_current_head_then_poked_growth() -> None:
    """A listener starts at the current head and sees a new head as soon as it is poked."""
    heads = Heads()
    heads.values["a"] = 3
    notifier = ChangeNotifier(heads, interval=3600)  # only pokes move it in this test
    with anyio.fail_after(5):
        async with notifier.running(), notifier.listen("a") as listener:
            assert listener.head == 3
            assert await listener.next_head(3, within=0.01) is None
            heads.values["a"] = 5
            notifier.poke("a")
            assert await listener.next_head(3, within=5) == 5


async def test_poll_interval_finds_changes_made_elsewhere() -> None:
    """Without a poke (another process wrote), the poller finds the change within its interval."""
    heads = Heads()
    notifier = ChangeNotifier(heads, interval=0.01)
    with anyio.fail_after(5):
        async with notifier.running(), notifier.listen("a") as listener:
            heads.values["a"] = 1
            assert await listener.next_head(0, within=5) == 1


async def test_only_listened_tenants_are_polled_and_pollers_stop() -> None:
    """Unlistened tenants are never read; the last listener leaving stops the poller."""
    heads = Heads()
    notifier = ChangeNotifier(heads, interval=3600)
    with anyio.fail_after(5):
        async with notifier.running():
            notifier.poke("nobody")
            async with notifier.listen("a"), notifier.listen("a"):
                pass
            reads = heads.reads["a"]
            notifier.poke("a")
            await anyio.lowlevel.checkpoint()
            assert heads.reads == {"a": reads}


async def test_tenants_are_apart() -> None:
    """A change of one tenant does not wake another tenant's listener."""
    heads = Heads()
    notifier = ChangeNotifier(heads, interval=3600)
    with anyio.fail_after(5):
        async with notifier.running(), notifier.listen("a") as a, notifier.listen("b") as b:
            heads.values["a"] = 9
            notifier.poke("a")
            notifier.poke("b")
            assert await a.next_head(0, within=5) == 9
            assert await b.next_head(0, within=0.05) is None


async def test_close_ends_listeners() -> None:
    """Closing the notifier (server shutdown) wakes listeners, which report closed."""
    notifier = ChangeNotifier(Heads(), interval=3600)
    with anyio.fail_after(5):
        async with notifier.running(), notifier.listen("a") as listener:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _close_soon(notifier))
                assert await listener.next_head(0, within=5) is None
            assert listener.closed
    with pytest.raises(RuntimeError, match="not running"):
        async with notifier.listen("a"):
            pass


async def _close_soon(notifier: ChangeNotifier) -> None:
    await anyio.lowlevel.checkpoint()
    notifier.close()


async def test_a_failing_head_read_does_not_end_the_stream() -> None:
    """A storage error while polling is logged and the listener keeps its last head."""
    calls = 0

    async def flaky(tenant: str) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("storage down")
        return calls

    notifier = ChangeNotifier(flaky, interval=0.01)
    with anyio.fail_after(5):
        async with notifier.running(), notifier.listen("a") as listener:
            assert listener.head == 1
            assert await listener.next_head(1, within=5) == 3
