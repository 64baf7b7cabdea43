"""Faults on the wire, through the TCP fault proxy of the test kit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from nexus_store.testing import FaultMode, FaultProxy

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
