"""The per-tenant rate limit kept in PostgreSQL, so every server process sees one bucket.

Several ``nexus-store serve`` processes on one PostgreSQL database (behind a load
balancer) would each admit the full rate with in-process buckets. Here a tenant's token
bucket is one row of ``nx_rate_limits``, refilled and spent by a single statement (an
upsert whose row lock serializes the processes), with time read from the database's own
clock, so the servers' clocks need not agree. The arithmetic is the one of
:func:`~nexus_store.server._limits.take_token`.

A request costs one short statement on a connection of the limiter's own. If the
database cannot be reached for the limit, the request is admitted (and the failure
logged): the push or pull that follows meets the same database and reports the trouble
itself, and a limiter must not turn a blip into refusals.
"""

from __future__ import annotations

import logging

import anyio

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PostgreSQL storage needs psycopg 3: pip install 'nexus-store[postgres]'"
    ) from exc

__all__ = ["PostgresRateLimiter"]

_log = logging.getLogger("nexus_store.server")

_LOCK = 0x6E78_7261_7465  # serializes concurrent creation of the table
_CREATE = (
    "CREATE TABLE IF NOT EXISTS nx_rate_limits ("
    "tenant text PRIMARY KEY, tokens double precision NOT NULL, "
    "at double precision NOT NULL, admitted boolean NOT NULL)"
)
# refilled = min(burst, tokens + elapsed * rate); spend one if at least one is there. Every
# expression in SET reads the row as it was, so "admitted" and "tokens" agree.
_TAKE = """
INSERT INTO nx_rate_limits AS b (tenant, tokens, at, admitted)
VALUES (%(tenant)s, %(burst)s - 1, extract(epoch FROM clock_timestamp()), true)
ON CONFLICT (tenant) DO UPDATE SET
  tokens = CASE
    WHEN least(%(burst)s, b.tokens + greatest(0, EXCLUDED.at - b.at) * %(rate)s) >= 1
    THEN least(%(burst)s, b.tokens + greatest(0, EXCLUDED.at - b.at) * %(rate)s) - 1
    ELSE least(%(burst)s, b.tokens + greatest(0, EXCLUDED.at - b.at) * %(rate)s)
  END,
  admitted = least(%(burst)s, b.tokens + greatest(0, EXCLUDED.at - b.at) * %(rate)s) >= 1,
  at = EXCLUDED.at
RETURNING tokens, admitted
"""


class PostgresRateLimiter:
    """One token bucket per tenant, in the PostgreSQL database the servers share.

    Args:
        dsn: the database (the server's ``--database`` URL).
        rate: requests per second per tenant, over all server processes together.
        burst: the bucket's capacity.
        connect_timeout: seconds to wait for the connection.
    """

    def __init__(self, dsn: str, rate: float, burst: float, *, connect_timeout: float = 10.0):
        if rate <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        self._dsn = dsn
        self._rate = rate
        self._burst = burst
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[tuple[float, bool]] | None = None
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"PostgresRateLimiter(<dsn hidden>, rate={self._rate}, burst={self._burst})"

    async def _connection(self) -> psycopg.AsyncConnection[tuple[float, bool]]:
        if self._conn is None or self._conn.closed:
            conn: psycopg.AsyncConnection[
                tuple[float, bool]
            ] = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                await conn.execute(_CREATE)
            self._conn = conn
        return self._conn

    async def open(self) -> None:
        """Connect and create the table now (the first request would do it otherwise).

        Raises:
            psycopg.Error: the database cannot be reached.
        """
        async with self._lock:
            await self._connection()

    async def acquire(self, tenant: str) -> float:
        """Spend one request for ``tenant``: ``0.0`` if admitted, else seconds to wait."""
        params = {"tenant": tenant, "rate": self._rate, "burst": self._burst}
        try:
            async with self._lock:
                conn = await self._connection()
                cursor = await conn.execute(_TAKE, params)
                row = await cursor.fetchone()
        except psycopg.Error as exc:
            _log.warning("rate limit not checked (PostgreSQL: %s); request admitted", exc)
            await self._drop()
            return 0.0
        assert row is not None
        tokens, admitted = row
        return 0.0 if admitted else (1.0 - tokens) / self._rate

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        async with self._lock:
            await self._drop()
