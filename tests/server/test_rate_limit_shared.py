"""With PostgreSQL storage, the per-tenant rate limit holds across all server processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anyio
import httpx
import pytest

from nexus_store.server._limits_postgres import PostgresRateLimiter
from nexus_store.testing import ServerProcess

pytestmark = pytest.mark.postgres

BURST = 4


@pytest.fixture(scope="module")
def servers(postgres_dsn: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two `nexus-store serve` processes on one PostgreSQL database, rate 1/min, burst 4."""
    tokens = {"rate-a": "tenant-rate-a", "rate-b": "tenant-rate-b"}
    with (
        ServerProcess(postgres_dsn, tokens=tokens, rate="1/min", burst=BURST) as first,
        ServerProcess(postgres_dsn, tokens=tokens, rate="1/min", burst=BURST) as second,
    ):
        yield first, second


def test_two_processes_admit_the_rate_once_not_twice(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """Requests spread over two servers: BURST admitted in all (per-process: twice as many)."""
    statuses: list[int] = []
    retry_after: set[str] = set()
    for round_ in range(BURST * 2):
        server = servers[round_ % 2]
        response = httpx.get(
            f"{server.base_url}/v1/pull",
            params={"cursor": 0, "limit": 1},
            headers={"authorization": "Bearer rate-a"},
            timeout=10,
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            retry_after.add(response.headers["retry-after"])
    # 1/min refills one request a minute: none within this test's few seconds.
    assert statuses.count(200) == BURST, statuses
    assert statuses.count(429) == BURST, statuses
    assert all(int(value) >= 1 for value in retry_after)
    # Another tenant has a bucket of its own.
    other = httpx.get(
        f"{servers[1].base_url}/v1/pull",
        params={"cursor": 0, "limit": 1},
        headers={"authorization": "Bearer rate-b"},
        timeout=10,
    )
    assert other.status_code == 200


@pytest.mark.anyio
async def test_the_shared_bucket_refills_at_the_rate(postgres_dsn: str) -> None:
    """A bucket spent empty admits again once the database clock says a token came back."""
    tenant = f"refill-{uuid.uuid4().hex[:8]}"
    limiter = PostgresRateLimiter(postgres_dsn, rate=20.0, burst=2)
    other = PostgresRateLimiter(postgres_dsn, rate=20.0, burst=2)
    try:
        assert await limiter.acquire(tenant) == 0.0
        assert await other.acquire(tenant) == 0.0
        wait = await limiter.acquire(tenant)
        assert 0.0 < wait <= 0.05 + 1e-6  # one token in at most 1/20 s
        # Time, not work, is awaited here: the token is back once `wait` has passed.
        await anyio.sleep(wait + 0.02)
        assert await other.acquire(tenant) == 0.0
    finally:
        await limiter.aclose()
        await other.aclose()


@pytest.mark.anyio
async def test_an_unreachable_database_admits_requests() -> None:
    """A limiter that cannot reach its database lets requests through (and logs it)."""
    limiter = PostgresRateLimiter(
        "postgresql://nobody@127.0.0.1:1/none", rate=1.0, burst=1, connect_timeout=1
    )
    try:
        assert await limiter.acquire("t") == 0.0
    finally:
        await limiter.aclose()
