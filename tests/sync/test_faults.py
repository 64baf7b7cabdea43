"""Faults on the wire, through the TCP fault proxy of the test kit."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import BaseModel

from nexus_store import SyncPriority
from nexus_store._store import NexusStore
from nexus_store.backends import Change
from nexus_store.backends._http import HttpBackend
from nexus_store.sync.engine._progress import SyncStopReason, SyncSummary
from nexus_store.sync.engine._runner import SyncRunner
from nexus_store.testing import FakeClock, FaultMode, FaultProxy, ServerProcess

pytestmark = pytest.mark.anyio


# -- the proxy on its own, against a tiny counting HTTP server --------------------------------


class _CountingServer:
    """An HTTP/1.1 keep-alive server answering ``seen=<n>`` to every request."""

    def __init__(self) -> None:
        self.seen = 0
        self.port = 0

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        async with stream:
            with contextlib.suppress(
                anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead
            ):
                while True:
                    await self._answer_one(stream, reader)

    async def _answer_one(
        self, stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream
    ) -> None:
        head = await reader.receive_until(b"\r\n\r\n", 65536)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.receive_exactly(length)
        self.seen += 1
        body = f"seen={self.seen}".encode() + b"." * 100
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\ncontent-type: text/plain\r\n\r\n"
            + body
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_CountingServer]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._handle)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _proxied(seed: int = 0) -> AsyncIterator[tuple[_CountingServer, FaultProxy]]:
    async with (
        _CountingServer().running() as server,
        FaultProxy(f"127.0.0.1:{server.port}", seed=seed) as proxy,
    ):
        yield server, proxy


async def test_proxy_passes_requests_over_keep_alive() -> None:
    """In PASS mode every request is forwarded and answered, reusing one connection."""
    async with _proxied() as (server, proxy), httpx.AsyncClient(base_url=proxy.url) as client:
        with anyio.fail_after(10):
            for i in range(1, 6):
                response = await client.post("/v1/push", content=b"x" * 1000)
                assert response.text.startswith(f"seen={i}.")
    assert server.seen == 5
    assert proxy.stats.passed == 5
    assert proxy.stats.connections == 1


async def test_dropped_response_reaches_the_server_but_not_the_client() -> None:
    """DROP_RESPONSE forwards (the server counts it) and the client sees a broken connection."""
    async with _proxied() as (server, proxy), httpx.AsyncClient(base_url=proxy.url) as client:
        proxy.set_fault(FaultMode.DROP_RESPONSE)
        with anyio.fail_after(10), pytest.raises(httpx.TransportError):
            await client.post("/v1/push", content=b"x")
        assert server.seen == 1
        assert proxy.stats.dropped == 1
        proxy.clear()
        with anyio.fail_after(10):
            assert (await client.get("/health")).text.startswith("seen=2")


async def test_reset_never_reaches_the_server() -> None:
    """RESET aborts the client connection before anything is forwarded."""
    async with _proxied() as (server, proxy), httpx.AsyncClient(base_url=proxy.url) as client:
        proxy.set_fault(FaultMode.RESET)
        with anyio.fail_after(10), pytest.raises(httpx.TransportError):
            await client.post("/v1/push", content=b"x")
    assert server.seen == 0
    assert proxy.stats.reset == 1


async def test_truncated_body_is_detected_by_the_client() -> None:
    """TRUNCATE sends headers and half the body; the client sees an incomplete response."""
    async with _proxied() as (server, proxy), httpx.AsyncClient(base_url=proxy.url) as client:
        proxy.set_fault(FaultMode.TRUNCATE)
        with anyio.fail_after(10), pytest.raises(httpx.TransportError):
            await client.post("/v1/push", content=b"x")
    assert server.seen == 1
    assert proxy.stats.truncated == 1


async def test_stall_holds_the_answer_until_the_client_gives_up() -> None:
    """STALL forwards and then answers nothing; the client times out."""
    async with (
        _proxied() as (server, proxy),
        httpx.AsyncClient(base_url=proxy.url, timeout=0.3) as client,
    ):
        proxy.set_fault(FaultMode.STALL)
        with anyio.fail_after(10), pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/push", content=b"x")
    assert server.seen == 1
    assert proxy.stats.stalled == 1


async def test_canned_503_and_429_do_not_reach_the_server() -> None:
    """UNAVAILABLE answers 503 and RATE_LIMITED 429 with Retry-After, without forwarding."""
    async with _proxied() as (server, proxy), httpx.AsyncClient(base_url=proxy.url) as client:
        proxy.set_fault(FaultMode.UNAVAILABLE)
        with anyio.fail_after(10):
            assert (await client.post("/v1/push", content=b"x")).status_code == 503
            proxy.set_fault(FaultMode.RATE_LIMITED, retry_after=7)
            limited = await client.post("/v1/push", content=b"x")
            assert limited.status_code == 429
            assert limited.headers["retry-after"] == "7"
    assert server.seen == 0
    assert (proxy.stats.unavailable, proxy.stats.rate_limited) == (1, 1)


async def test_fault_rate_and_path_filter_are_seeded() -> None:
    """A rate hits about that fraction of matching paths, the same ones for the same seed."""

    async def run(seed: int) -> list[bool]:
        hits: list[bool] = []
        async with _proxied(seed) as (_, proxy), httpx.AsyncClient(base_url=proxy.url) as client:
            proxy.set_fault(FaultMode.UNAVAILABLE, rate=0.3, path_prefix="/v1/push")
            with anyio.fail_after(20):
                for _ in range(100):
                    response = await client.post("/v1/push", content=b"x")
                    hits.append(response.status_code == 503)
                assert (await client.get("/v1/pull")).status_code == 200
        return hits

    first, second = await run(7), await run(7)
    assert first == second
    assert 15 <= sum(first) <= 45


# -- sync runs through the proxy, against a real server process --------------------------------

_TOKENS = {f"tok{i}": f"tenant{i}" for i in range(32)}
_next_token = itertools.count()


class Note(BaseModel):
    id: str
    text: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server process (SQLite storage) with a small body limit, for the whole module."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(
        f"sqlite:///{folder}/server.db", tokens=_TOKENS, max_body="256KiB"
    ) as running:
        yield running


@contextlib.asynccontextmanager
async def _client(
    server: ServerProcess,
    *,
    seed: int = 0,
    request_timeout: float = 10.0,
    clock: FakeClock | None = None,
) -> AsyncIterator[tuple[FaultProxy, HttpBackend, HttpBackend]]:
    """A proxy in front of the server, a backend through it, and a direct one (to check)."""
    token = f"tok{next(_next_token)}"
    async with (
        FaultProxy(server.base_url, seed=seed) as proxy,
        HttpBackend(proxy.url, token=token, timeout=request_timeout, clock=clock) as through,
        HttpBackend(server.base_url, token=token) as direct,
    ):
        yield proxy, through, direct


async def _server_state(direct: HttpBackend) -> tuple[int, int]:
    """(items, head) of the tenant: head counts accepted writes, so a replay shows."""
    items: list[Change] = []
    cursor = 0
    for _ in range(100):
        page = await direct.pull(cursor, 5000)
        items += page.changes
        if not page.has_more:
            break
        cursor = page.cursor
    return len(items), max((c.version for c in items), default=0)


async def _drain(
    store: NexusStore[Note, str],
    backend: HttpBackend,
    clock: FakeClock,
    *,
    runs: int = 60,
    **kw: Any,
) -> list[SyncSummary]:
    """Run until the queue has no live op, jumping the fake clock over backoffs and the
    remote's pauses."""
    summaries = []
    for _ in range(runs):
        summary = await SyncRunner(store, backend, **kw).run()
        summaries.append(summary)
        if store.queue.stats().live == 0:
            return summaries
        due = [op.next_attempt_at for op in store.queue.pending()]
        if summary.paused_until is not None:
            due.append(summary.paused_until.timestamp())
        clock.set(max([clock.now(), *due]) + 0.001)
    raise AssertionError(f"the queue did not drain: {store.queue.stats()}")


def _store(clock: FakeClock, count: int) -> NexusStore[Note, str]:
    store: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
    store.save_many([Note(id=f"n{i}", text="x" * 80) for i in range(count)])
    return store


async def test_responses_dropped_after_commit_still_apply_every_op_once(
    server: ServerProcess,
) -> None:
    """20% of push answers lost after the server committed: once each, and the queue empties."""
    clock = FakeClock()
    store = _store(clock, 3000)
    async with _client(server, seed=11) as (proxy, through, direct):
        proxy.set_fault(FaultMode.DROP_RESPONSE, rate=0.2, path_prefix="/v1/push")
        summaries = await _drain(store, through, clock, batch_size=100, pull=False)
        state = await _server_state(direct)
    assert proxy.stats.dropped >= 3
    assert sum(s.pushed for s in summaries) == 3000
    assert state == (3000, 3000)
    assert store.queue.stats().total == 0


async def test_503_then_429_backs_off_and_honours_retry_after(server: ServerProcess) -> None:
    """503s pause the remote (backoff with jitter, no attempt charged to the ops); after a
    429 no request comes before Retry-After."""
    clock = FakeClock()
    store = _store(clock, 50)
    async with _client(server, clock=clock) as (proxy, through, direct):
        proxy.set_fault(FaultMode.UNAVAILABLE, path_prefix="/v1/push")
        waits = []
        for attempt in (1, 2, 3):
            summary = await SyncRunner(store, through, pull=False).run()
            assert proxy.count(path_prefix="/v1/push") == attempt
            assert all(op.attempts == 0 for op in store.queue.pending())
            assert summary.paused_until is not None
            waits.append(summary.paused_until.timestamp() - clock.now())
            # Before the pause ends nothing is sent.
            await SyncRunner(store, through, pull=False).run()
            assert proxy.count(path_prefix="/v1/push") == attempt
            clock.advance(waits[-1] + 0.001)
        assert 0 <= waits[0] <= 0.5  # the probe backoff: ceilings of 0.5 s, 1 s, 2 s
        assert waits[1] <= 1.0
        assert waits[2] <= 2.0
        assert proxy.count(path_prefix="/health") == 2  # each run after a pause probed first
        proxy.set_fault(FaultMode.RATE_LIMITED, path_prefix="/v1/push", retry_after=60)
        await SyncRunner(store, through, pull=False).run()
        assert proxy.count(path_prefix="/v1/push") == 4
        # The remote is paused for 60 s: no run sends anything before then.
        proxy.clear()
        clock.advance(59)
        paused = await SyncRunner(store, through, pull=False).run()
        assert paused.stop_reason is SyncStopReason.PAUSED
        assert proxy.count(path_prefix="/v1/push") == 4
        clock.advance(2)
        final = await SyncRunner(store, through, pull=False).run()
        state = await _server_state(direct)
    assert final.pushed == 50
    assert state == (50, 50)


@pytest.mark.parametrize("good", [2000, pytest.param(10_000, marks=pytest.mark.slow)])
async def test_a_poison_op_is_dead_lettered_among_many_good_ones(
    server: ServerProcess, good: int
) -> None:
    """An op the server always refuses (413: too big) is dead-lettered; all others arrive."""
    clock = FakeClock()
    store = _store(clock, good // 2)
    store.save(Note(id="poison", text="y" * 300_000), priority=SyncPriority.HIGH)
    store.save_many([Note(id=f"m{i}", text="x" * 80) for i in range(good - good // 2)])
    async with _client(server) as (proxy, through, direct):
        summary = await SyncRunner(store, through, batch_size=500, pull=False).run()
        state = await _server_state(direct)
    assert summary.pushed == good
    assert summary.dead_lettered == 1
    dead = store.queue.dead()
    assert [op.item_id for op in dead] == ["poison"]
    assert dead[0].last_error is not None
    assert "PayloadTooLargeError" in dead[0].last_error
    assert state == (good, good)
    assert proxy.stats.requests <= good // 500 + 2 * 9 + 1  # bisecting costs 2 per halving


@pytest.mark.parametrize("mode", [FaultMode.RESET, FaultMode.STALL, FaultMode.TRUNCATE])
async def test_broken_connections_never_ack_and_the_queue_drains_after(
    server: ServerProcess, mode: FaultMode
) -> None:
    """Resets, stalls and truncated answers ack nothing; once they stop, all arrive once."""
    clock = FakeClock()
    store = _store(clock, 400)
    async with _client(server, request_timeout=0.5) as (proxy, through, direct):
        proxy.set_fault(mode, path_prefix="/v1/push")
        broken = await SyncRunner(store, through, batch_size=100, pull=False).run()
        assert broken.pushed == 0
        assert broken.stop_reason is SyncStopReason.FAILURES
        assert store.queue.stats().live == 400
        assert all(store.stored_version(f"n{i}") == 0 for i in range(400))
        proxy.clear()
        clock.advance(3600)
        await _drain(store, through, clock, batch_size=100, pull=False)
        state = await _server_state(direct)
    assert state == (400, 400)
    assert store.queue.stats().total == 0
