"""A 429 or 503 with Retry-After pauses every request of the backend until the deadline."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import anyio
import httpx
import msgpack
import pytest
from pydantic import BaseModel

from nexus_store import NexusStore, RateLimitedError, ServerUnavailableError
from nexus_store.backends import HttpBackend, RemoteOp
from nexus_store.backends._pause import RemotePause, pause_for
from nexus_store.testing import FakeClock, FaultMode, FaultProxy, ServerProcess

pytestmark = pytest.mark.anyio


def op(n: int) -> RemoteOp:
    return RemoteOp(
        op_id=f"op-{n}",
        collection="notes",
        item_id=f"i{n}",
        kind="upsert",
        data={"id": f"i{n}"},
        hlc=f"{1_700_000_000_000 + n:013d}-00000-node",
    )


class Server:
    """A mock server that answers ``answer`` (a status and headers) until told otherwise."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self.seen = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.status != 200:
            return httpx.Response(self.status, headers=self.headers, json={"detail": "wait"})
        if request.url.path.endswith("/events"):
            return httpx.Response(
                200,
                content=b'event: head\ndata: {"head": 0}\n\n',
                headers={"content-type": "text/event-stream"},
            )
        if request.url.path.endswith("/push"):
            ops = msgpack.unpackb(request.content)["ops"]
            body: object = {
                "results": [
                    {"op_id": o["op_id"], "status": "accepted", "version": 1 + i}
                    for i, o in enumerate(ops)
                ]
            }
        else:
            body = {"changes": [], "cursor": 0, "has_more": False}
        return httpx.Response(
            200, content=msgpack.packb(body), headers={"content-type": "application/msgpack"}
        )

    def backend(self, clock: FakeClock) -> HttpBackend:
        return HttpBackend(
            "http://sync.test", token="t", transport=httpx.MockTransport(self.handler), clock=clock
        )


async def all_three(remote: HttpBackend) -> list[float | None]:
    """Push, pull and open the event stream; each one's ``retry_after`` (``None``: it went)."""
    waits: list[float | None] = []
    for call in (lambda: remote.push([op(1)]), lambda: remote.pull(0)):
        try:
            await call()
            waits.append(None)
        except (RateLimitedError, ServerUnavailableError) as exc:
            waits.append(exc.retry_after)
    try:
        async with remote.watch():
            waits.append(None)
    except (RateLimitedError, ServerUnavailableError) as exc:
        waits.append(exc.retry_after)
    return waits


def test_only_429_and_503_with_a_wait_pause() -> None:
    """pause_for: 429 and 503 with a positive Retry-After pause; anything else does not."""
    assert pause_for(429, 7.0) == 7.0
    assert pause_for(503, 0.5) == 0.5
    assert pause_for(503, None) is None
    assert pause_for(503, 0.0) is None
    assert pause_for(500, 7.0) is None
    assert pause_for(502, 7.0) is None


def test_pause_keeps_the_later_deadline_and_ends_on_time() -> None:
    """A shorter Retry-After never shortens a running pause; it ends exactly at its deadline."""
    clock = FakeClock()
    pause = RemotePause(clock)
    pause.start(10, RateLimitedError("x"))
    pause.start(3, ServerUnavailableError("y"))
    clock.advance(9.5)
    with pytest.raises(RateLimitedError) as caught:
        pause.check()
    assert caught.value.retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    pause.check()
    assert pause.remaining == 0.0


@pytest.mark.parametrize(
    ("status", "error"), [(429, RateLimitedError), (503, ServerUnavailableError)]
)
async def test_retry_after_pauses_push_pull_and_events(status: int, error: type[Exception]) -> None:
    """Until the deadline every call raises with the time left and sends nothing; then all go."""
    clock = FakeClock()
    server = Server(status, {"retry-after": "7"})
    async with server.backend(clock) as remote:
        with pytest.raises(error) as caught:
            await remote.push([op(1)])
        assert caught.value.retry_after == 7.0  # type: ignore[attr-defined]
        assert server.seen == 1
        server.status = 200  # the server is fine again, but we promised to wait
        for elapsed in (0.0, 3.0, 6.9):
            clock.set(1_700_000_000.0 + elapsed)
            waits = await all_three(remote)
            assert waits == [pytest.approx(7.0 - elapsed)] * 3
            assert remote.paused_for == pytest.approx(7.0 - elapsed)
        assert server.seen == 1
        clock.set(1_700_000_007.0)
        assert await all_three(remote) == [None, None, None]
        assert server.seen == 4


async def test_retry_after_as_an_http_date_pauses_too() -> None:
    """An HTTP-date Retry-After pauses until that date (read on the backend's wall clock)."""
    clock = FakeClock(start=datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    when = format_datetime(datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC), usegmt=True)
    server = Server(503, {"retry-after": when})
    async with server.backend(clock) as remote:
        with pytest.raises(ServerUnavailableError):
            await remote.pull(0)
        clock.advance(29)
        with pytest.raises(ServerUnavailableError) as caught:
            await remote.pull(0)
        assert caught.value.retry_after == pytest.approx(1.0)
        clock.advance(1)
        server.status = 200
        assert (await remote.pull(0)).changes == []
    assert server.seen == 2


async def test_no_retry_after_no_pause_and_absurd_waits_are_capped() -> None:
    """A 503 without Retry-After does not pause; a wait of years is read as one day."""
    clock = FakeClock()
    server = Server(503, {})
    async with server.backend(clock) as remote:
        for _ in range(3):
            with pytest.raises(ServerUnavailableError) as caught:
                await remote.pull(0)
            assert caught.value.retry_after is None
        assert server.seen == 3
        server.headers = {"retry-after": "999999999999"}
        with pytest.raises(ServerUnavailableError) as caught:
            await remote.pull(0)
        assert caught.value.retry_after == 86_400.0
        assert remote.paused_for == 86_400.0


class SteppedWallClock:
    """A clock whose wall time can be stepped while its monotonic time runs on."""

    def __init__(self, base: FakeClock) -> None:
        self.base = base
        self.step = 0.0

    def now(self) -> float:
        return self.base.now() + self.step

    def monotonic(self) -> float:
        return self.base.monotonic()

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)


async def test_pause_survives_wall_clock_steps() -> None:
    """The deadline is kept on the monotonic clock: stepping the wall clock changes nothing."""
    clock = SteppedWallClock(FakeClock())
    server = Server(429, {"retry-after": "10"})
    async with HttpBackend(
        "http://sync.test", token="t", transport=httpx.MockTransport(server.handler), clock=clock
    ) as remote:
        with pytest.raises(RateLimitedError):
            await remote.pull(0)
        clock.step = -3600  # the wall clock steps back an hour
        assert remote.paused_for == pytest.approx(10.0)
        clock.step = 7200  # and forward two
        assert remote.paused_for == pytest.approx(10.0)
        clock.base.advance(10)
        server.status = 200
        assert (await remote.pull(0)).changes == []


# -- against a real server ----------------------------------------------------------------


class Note(BaseModel):
    id: str


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A real server process."""
    with ServerProcess(tokens={"tok": "pause"}) as process:
        yield process


async def test_sync_loop_sends_nothing_before_the_deadline(server: ServerProcess) -> None:
    """An app calling sync() in a loop during a 429 with Retry-After: 7 sends one request."""
    clock = FakeClock()
    store = NexusStore(":memory:", model=Note, clock=clock)
    store.save_many([Note(id=f"n{i}") for i in range(50)])
    async with (
        FaultProxy(server.base_url) as proxy,
        HttpBackend(proxy.url, token="tok", clock=clock) as remote,
    ):
        proxy.set_fault(FaultMode.RATE_LIMITED, retry_after=7)
        with anyio.fail_after(30):
            for _ in range(70):  # 0.1 s apart on the fake clock: the 7 s of the outage
                await store.async_sync(backend=remote)
                clock.advance(0.1)
                if remote.paused_for == 0:
                    break
            before_deadline = proxy.stats.requests
            proxy.clear()
            clock.advance(remote.paused_for)
            clock.advance(3600)  # past the ops' own backoff (the engine's business)
            summary = await store.async_sync(backend=remote)
    store.close()
    assert before_deadline == 1
    assert summary.pushed == 50
    print(f"\nrequests before a Retry-After: 7 deadline (70 sync calls): {before_deadline}")
