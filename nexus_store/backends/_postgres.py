"""PostgresBackend: straight to PostgreSQL, with the sync server's schema and rules."""

from __future__ import annotations

from ..server._core import ServerCore
from ..server._rules import ConflictPolicy
from ._in_process import InProcessBackend

__all__ = ["PostgresBackend"]


class PostgresBackend(InProcessBackend):
    """A backend that writes to PostgreSQL itself instead of through the sync server.

    It runs the server core in process over the same tables as ``nexus-store serve
    --database postgresql://...``, so clients of either kind can share one database.
    Needs the ``postgres`` extra (psycopg 3), imported when the first backend is made.
    psycopg errors arrive translated: :class:`~nexus_store.NetworkError` when the database
    cannot be reached, :class:`~nexus_store.AuthError` for refused credentials,
    :class:`~nexus_store.ServerUnavailableError` otherwise. Its connections belong to
    the asyncio loop that opened them: use it from one loop (``store.sync()`` always uses
    the same one), and close it with ``close()``, ``with``, ``aclose()`` or ``async with``
    (a store closes the backend it was given, unless ``owns_backend=False``).

    Args:
        dsn: a libpq connection string or ``postgresql://`` URI.
        tenant: whose data this client reads and writes.
        conflict_policy: ``"lww"`` (default), ``"server_wins"`` or a resolver.
        max_batch: the most ops one push may carry.
        max_connections: the most connections this backend opens at once.
    """

    def __init__(
        self,
        dsn: str,
        *,
        tenant: str = "default",
        conflict_policy: ConflictPolicy = "lww",
        max_batch: int = 1000,
        max_connections: int = 4,
    ) -> None:
        from ..server.storage._postgres import PostgresStorage  # noqa: PLC0415 - psycopg is optional

        core = ServerCore(
            PostgresStorage(dsn, max_connections=max_connections, max_idle=max_connections),
            conflict_policy=conflict_policy,
            max_batch=max_batch,
        )
        super().__init__(core, tenant=tenant, owns_core=True, loop_bound=True)

    def __repr__(self) -> str:
        return f"PostgresBackend(<dsn hidden>, tenant={self.tenant!r})"
