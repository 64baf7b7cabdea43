"""HttpBackend never re-sends a refused token, and tells refreshing providers about a 401.

Unit tests answer through ``httpx.MockTransport`` and count requests; the last tests run
a store against a real server process through a counting proxy.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import anyio
import httpx
import msgpack
import pytest
from pydantic import BaseModel

from nexus_store import AuthError, NexusStore
from nexus_store.backends import HttpBackend, RefreshingTokenProvider, RemoteOp
from nexus_store.server import SignedTokenVerifier
from nexus_store.testing import FakeClock, FaultProxy, ServerProcess

pytestmark = pytest.mark.anyio

SECRET = "token-test-secret-0123456789abcdef"
signer = SignedTokenVerifier(SECRET)


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
    """A mock server accepting only the tokens in ``good``; counts requests by token."""

    def __init__(self, *good: str) -> None:
        self.good = set(good)
        self.seen: list[str | None] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization")
        token = auth.removeprefix("Bearer ") if auth else None
        self.seen.append(token)
        if token not in self.good:
            return httpx.Response(401, json={"error": "unauthorized", "detail": "expired"})
        if request.url.path.endswith("/push"):
            ops = msgpack.unpackb(request.content)["ops"]
            body = {
                "results": [
                    {"op_id": o["op_id"], "status": "accepted", "version": i + 1}
                    for i, o in enumerate(ops)
                ]
            }
        elif request.url.path.endswith("/events"):
            return httpx.Response(
                200,
                content=b'event: head\ndata: {"head": 0}\n\n',
                headers={"content-type": "text/event-stream"},
            )
        else:
            body = {"changes": [], "cursor": 0, "has_more": False}
        return httpx.Response(
            200, content=msgpack.packb(body), headers={"content-type": "application/msgpack"}
        )

    def backend(self, token: object) -> HttpBackend:
        return HttpBackend(
            "http://sync.test",
            token=token,  # type: ignore[arg-type]
            transport=httpx.MockTransport(self.handler),
        )


class CachingProvider:
    """A provider that caches its token until told it was refused."""

    def __init__(self, tokens: list[str]) -> None:
        self._next = iter(tokens)
        self._token = next(self._next)
        self.refreshed: list[str] = []

    async def __call__(self) -> str:
        return self._token

    async def refresh(self, refused: str) -> str:
        self.refreshed.append(refused)
        self._token = next(self._next, self._token)
        return self._token


async def every_call(remote: HttpBackend) -> list[type[BaseException] | None]:
    """Push, pull and open the event stream once each; the error type each raised."""
    outcomes: list[type[BaseException] | None] = []
    for call in (
        lambda: remote.push([op(1)]),
        lambda: remote.pull(0),
    ):
        try:
            await call()
            outcomes.append(None)
        except AuthError:
            outcomes.append(AuthError)
    try:
        async with remote.watch():
            outcomes.append(None)
    except AuthError:
        outcomes.append(AuthError)
    return outcomes


async def test_a_refused_fixed_token_is_sent_once() -> None:
    """After a 401, a fixed token is never sent again: push, pull and events fail at once."""
    server = Server()
    async with server.backend("dead") as remote:
        for _ in range(5):
            assert await every_call(remote) == [AuthError] * 3
    assert server.seen == ["dead"]


async def test_a_caching_provider_is_told_to_refresh() -> None:
    """A 401 calls refresh() with the refused token; the request goes once more with the new one."""
    server = Server("new")
    provider = CachingProvider(["old", "new"])
    assert isinstance(provider, RefreshingTokenProvider)
    async with server.backend(provider) as remote:
        assert await every_call(remote) == [None, None, None]
    assert provider.refreshed == ["old"]
    assert server.seen == ["old", "new", "new", "new"]


async def test_a_provider_handing_back_the_refused_token_sends_nothing_more() -> None:
    """A plain callable (or a refresh) that returns the refused token again: no request is sent."""
    server = Server()
    async with server.backend(lambda: "dead") as remote:
        for _ in range(10):
            assert await every_call(remote) == [AuthError] * 3
    assert server.seen == ["dead"]
    stuck = CachingProvider(["dead"])  # refresh() hands back the same token
    server.seen.clear()
    async with server.backend(stuck) as remote:
        for _ in range(10):
            assert await every_call(remote) == [AuthError] * 3
    assert server.seen == ["dead"]
    # Each later call asks the provider to refresh the token it still holds.
    assert stuck.refreshed == ["dead"] * 30


async def test_at_most_one_request_per_rotation() -> None:
    """A token that keeps being refused costs one request per new token, not per call."""
    server = Server()
    tokens = itertools.count()
    current = {"token": f"t{next(tokens)}"}
    async with server.backend(lambda: current["token"]) as remote:
        for rotation in range(5):
            for _ in range(10):
                await every_call(remote)
            assert len(server.seen) == rotation + 1
            current["token"] = f"t{next(tokens)}"
        server.good.add(current["token"])
        assert await every_call(remote) == [None, None, None]
    assert len(server.seen) == 5 + 3


async def test_concurrent_401s_share_one_refresh() -> None:
    """Requests refused at the same time ask for one refresh between them."""
    server = Server("new")
    provider = CachingProvider(["old", "new", "newer"])
    async with server.backend(provider) as remote, anyio.create_task_group() as group:
        for n in range(5):
            group.start_soon(remote.push, [op(n)])
    assert provider.refreshed == ["old"]
    assert server.seen.count("newer") == 0


async def test_forbidden_is_not_a_refused_token() -> None:
    """A 403 (allowed in, not to this) does not stop the token from being sent again."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(403, json={"error": "forbidden", "detail": "no"})

    async with HttpBackend(
        "http://sync.test", token="tok", transport=httpx.MockTransport(handler)
    ) as remote:
        for _ in range(3):
            with pytest.raises(AuthError):
                await remote.pull(0)
    assert len(seen) == 3


async def test_sync_provider_with_refresh_works_too() -> None:
    """refresh() may be synchronous, like the provider itself."""
    server = Server("b")

    class Sync:
        token = "a"

        def __call__(self) -> str:
            return self.token

        def refresh(self, refused: str) -> str:
            self.token = "b"
            return self.token

    async with server.backend(Sync()) as remote:
        assert (await remote.pull(0)).changes == []
    assert server.seen == ["a", "b"]


# -- against a real server ----------------------------------------------------------------


class Note(BaseModel):
    id: str
    text: str = ""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A real server process accepting signed tokens."""
    with ServerProcess(secret=SECRET) as process:
        yield process


async def test_dead_token_through_many_syncs_costs_one_request(server: ServerProcess) -> None:
    """With a dead token, 30 sync runs send one request; after the rotation the queue drains."""
    tenant = "rotation"
    dead = signer.issue(tenant, ttl=-60)
    provider = CachingProvider([dead, signer.issue(tenant)])
    clock = FakeClock()
    async with FaultProxy(server.base_url) as proxy:
        # A provider that cannot refresh yet: it hands back the dead token.
        stuck = CachingProvider([dead])
        store = NexusStore(":memory:", model=Note, clock=clock)
        store.save_many([Note(id=f"n{i}") for i in range(20)])
        async with HttpBackend(proxy.url, token=stuck, clock=clock) as remote:
            with anyio.fail_after(30):
                for _ in range(30):
                    await store.async_sync(backend=remote)
                    clock.advance(60)
        dead_token_requests = proxy.stats.requests
        assert dead_token_requests == 1
        # The rotation is fixed: a provider whose refresh gives a good token.
        async with HttpBackend(proxy.url, token=provider, clock=clock) as remote:
            with anyio.fail_after(30):
                for _ in range(20):
                    await store.async_sync(backend=remote)
                    if store.queue.stats().live == 0:
                        break
                    clock.advance(3600)
        assert provider.refreshed == [dead]
        assert store.queue.stats().live == 0
        store.close()
    print(f"\nrequests sent with a dead token over 30 sync runs: {dead_token_requests}")
