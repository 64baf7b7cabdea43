"""HttpBackend against a real ``nexus-store serve`` process on 127.0.0.1.

The backend contract suite runs over HTTP with SQLite storage and with PostgreSQL
storage; then token refresh, limits and real network faults (through the test kit's
fault proxy) at this edge.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from nexus_store import AuthError, NetworkError, PayloadTooLargeError, ProtocolError
from nexus_store.backends import HttpBackend, OpStatus
from nexus_store.server._auth import SignedTokenVerifier
from nexus_store.testing import (
    BackendFactory,
    FaultMode,
    FaultProxy,
    MultiTenantBackendContract,
    OpWriter,
    ServerProcess,
    pull_all,
)

SECRET = "contract-secret-0123456789abcdef"
MAX_BATCH = 200
signer = SignedTokenVerifier(SECRET)


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on SQLite storage that accepts tokens signed with SECRET."""
    db: Path = tmp_path_factory.mktemp("http") / "server.db"
    with ServerProcess(f"sqlite:///{db}", secret=SECRET, max_batch=MAX_BATCH) as process:
        yield process


@pytest.fixture(scope="module")
def postgres_server(postgres_dsn: str) -> Iterator[ServerProcess]:
    """A server on the test session's PostgreSQL, accepting tokens signed with SECRET."""
    with ServerProcess(postgres_dsn, secret=SECRET, max_batch=MAX_BATCH) as process:
        yield process


class TestHttpSqliteContract(MultiTenantBackendContract):
    """HttpBackend clients of a real server process on SQLite storage."""

    @pytest.fixture
    def backend_factory(self, sqlite_server: ServerProcess) -> BackendFactory:
        """A client per tenant, each with its own signed token."""
        return lambda tenant: HttpBackend(sqlite_server.base_url, token=signer.issue(tenant))


@pytest.mark.postgres
class TestHttpPostgresContract(MultiTenantBackendContract):
    """HttpBackend clients of a real server process on PostgreSQL storage."""

    @pytest.fixture
    def backend_factory(self, postgres_server: ServerProcess) -> BackendFactory:
        """A client per tenant, each with its own signed token."""
        return lambda tenant: HttpBackend(postgres_server.base_url, token=signer.issue(tenant))


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.mark.anyio
async def test_stale_token_is_refreshed_once(sqlite_server: ServerProcess) -> None:
    """A provider whose first token has expired is asked again after the 401; the push lands."""
    name = tenant()
    issued = [signer.issue(name, ttl=-10), signer.issue(name)]
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return issued[min(calls, 2) - 1]

    writer = OpWriter("notes")
    async with HttpBackend(sqlite_server.base_url, token=provider) as remote:
        result = await remote.push([writer.upsert("n1", {"id": "n1"})])
        assert result.results[0].status is OpStatus.ACCEPTED
        assert calls == 2
        changes, _ = await pull_all(remote, "notes")
    assert [c.item_id for c in changes] == ["n1"]


@pytest.mark.anyio
async def test_always_stale_token_is_an_auth_error(sqlite_server: ServerProcess) -> None:
    """If the refreshed token is refused too, the push fails with AuthError and applies nothing."""
    name = tenant()
    writer = OpWriter("notes")
    async with HttpBackend(
        sqlite_server.base_url, token=lambda: signer.issue(name, ttl=-10)
    ) as bad:
        with pytest.raises(AuthError):
            await bad.push([writer.upsert("n1", {"id": "n1"})])
    async with HttpBackend(sqlite_server.base_url, token=signer.issue(name)) as good:
        assert (await good.pull(0)).changes == []


@pytest.mark.anyio
async def test_batch_over_server_limit_is_payload_too_large(sqlite_server: ServerProcess) -> None:
    """A batch over the server's --max-batch raises PayloadTooLargeError (nothing applied)."""
    writer = OpWriter("notes")
    ops = [writer.upsert(f"n{i}", {"id": f"n{i}"}) for i in range(MAX_BATCH + 1)]
    async with HttpBackend(sqlite_server.base_url, token=signer.issue(tenant())) as remote:
        with pytest.raises(PayloadTooLargeError):
            await remote.push(ops)
        assert (await remote.pull(0)).changes == []


@pytest.mark.anyio
async def test_response_cap_applies_to_real_answers(sqlite_server: ServerProcess) -> None:
    """Pages over max_response_bytes are asked for again, smaller; one change too big raises."""
    writer = OpWriter("notes")
    token = signer.issue(tenant())
    async with HttpBackend(sqlite_server.base_url, token=token) as remote:
        await remote.push(
            [writer.upsert(f"n{i}", {"id": f"n{i}", "t": "x" * 500}) for i in range(20)]
        )
    async with HttpBackend(sqlite_server.base_url, token=token, max_response_bytes=2000) as small:
        page = await small.pull(0, limit=20)  # asks again with 10, 5, 2 changes per page
        assert 1 <= len(page.changes) <= 2
        assert page.has_more
    async with HttpBackend(sqlite_server.base_url, token=token, max_response_bytes=300) as tiny:
        with pytest.raises(ProtocolError):
            await tiny.pull(0)  # not even one change fits


@pytest.mark.anyio
async def test_refused_connection_is_a_network_error() -> None:
    """Nothing listening on the port: NetworkError (retryable), on push and pull."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
        async with HttpBackend(url, token="t", timeout=5) as remote:
            with pytest.raises(NetworkError):
                await remote.push([OpWriter("notes").upsert("n1", {"id": "n1"})])
            with pytest.raises(NetworkError):
                await remote.pull(0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "error"),
    [
        (FaultMode.TRUNCATE, ProtocolError),
        (FaultMode.DROP_RESPONSE, NetworkError),
        (FaultMode.RESET, NetworkError),
        (FaultMode.STALL, NetworkError),
    ],
)
async def test_network_faults_never_ack_and_replay_is_one_effect(
    sqlite_server: ServerProcess, mode: FaultMode, error: type[Exception]
) -> None:
    """Truncated, dropped, reset or stalled answers raise; resending the batch has one effect."""
    writer = OpWriter("notes")
    ops = [writer.upsert(f"n{i}", {"id": f"n{i}", "n": i}) for i in range(5)]
    token = signer.issue(tenant())
    with anyio.fail_after(30):
        async with (
            FaultProxy(sqlite_server.base_url) as proxy,
            HttpBackend(proxy.url, token=token, timeout=1.0) as remote,
        ):
            proxy.set_fault(mode, path_prefix="/v1/push", stall_for=5)
            with pytest.raises(error):
                await remote.push(ops)
            proxy.clear()
            again = await remote.push(ops)
            assert [r.status for r in again.results] == [OpStatus.ACCEPTED] * 5
            changes, _ = await pull_all(remote, "notes")
    assert sorted(c.item_id for c in changes) == [f"n{i}" for i in range(5)]
    assert len({c.version for c in changes}) == 5
