"""The bare pipeline the HTTP benchmarks measure against: a minimal Starlette route.

It unpacks a msgpack body and upserts the items in one transaction (SQLite in WAL with
``synchronous=FULL``, or PostgreSQL with psycopg), under the same uvicorn settings as
``nexus-store serve``, in a process of its own (:class:`BareProcess`); a plain
``httpx.AsyncClient`` feeds it pre-built dicts (:func:`push_bare`, :func:`pull_bare`). With
``floor`` (route ``/push-floor``) it writes per op only the rows our server's schema must
hold, on SQLite with ``executemany`` and on PostgreSQL with binary arrays, as our storages
write them.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgpack

from ..server.storage._schema import ddl

__all__: list[str] = []

_ANNOUNCE = "nexus-store serve: listening on "
_TLS = ssl.create_default_context()  # built once, so no client pays for loading CA files


def bare_server_main(database: str) -> None:
    """Serve the bare pipeline on a free port of 127.0.0.1 (announced on stdout)."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from ..server._run import announce, bind_socket, run_loop, serve_app  # noqa: PLC0415

    if database.startswith("postgresql"):
        store: Any = _BarePostgres(database)
    else:
        store = _BareSqlite(database)

    async def push(request: Request) -> Response:
        ops = msgpack.unpackb(await request.body())["ops"]
        await store.upsert(ops)
        return Response(
            msgpack.packb({"acked": [op["op_id"] for op in ops]}), media_type="application/msgpack"
        )

    async def push_floor(request: Request) -> Response:
        ops = msgpack.unpackb(await request.body())["ops"]
        await store.write_like_ours(ops)
        return Response(
            msgpack.packb({"acked": [op["op_id"] for op in ops]}), media_type="application/msgpack"
        )

    async def pull(request: Request) -> Response:
        after = int(request.query_params.get("cursor", "0"))
        limit = int(request.query_params.get("limit", "500"))
        rows = await store.page(after, limit)
        body = {
            "changes": [
                {"item_id": r[1], "version": r[0], "data": msgpack.unpackb(r[2])} for r in rows
            ],
            "cursor": rows[-1][0] if rows else after,
            "has_more": len(rows) == limit,
        }
        return Response(msgpack.packb(body), media_type="application/msgpack")

    async def main() -> None:
        await store.open()
        routes = [Route("/push", push, methods=["POST"]), Route("/pull", pull)]
        routes.append(Route("/push-floor", push_floor, methods=["POST"]))
        app = Starlette(routes=routes)
        sock = bind_socket("127.0.0.1", 0)
        announce(sock)
        await serve_app(app, sock)

    run_loop(main())


class _BareSqlite:
    """One connection, WAL, synchronous=FULL; a batch is one transaction, on the loop."""

    def __init__(self, path: str) -> None:
        import sqlite3  # noqa: PLC0415

        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS items (collection TEXT NOT NULL, item_id TEXT NOT NULL, "
            "data BLOB NOT NULL, UNIQUE (collection, item_id))"
        )
        # The floor: the rows our server must write per op (its own schema, see
        # nexus_store.server.storage._schema), written straight from the decoded ops.
        for statement in ddl("sqlite"):
            self.conn.execute(statement)
        self.head = 0

    async def open(self) -> None:
        pass

    async def upsert(self, ops: list[dict[str, Any]]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO items (collection, item_id, data) VALUES (?, ?, ?) "
            "ON CONFLICT (collection, item_id) DO UPDATE SET data = excluded.data",
            [(op["collection"], op["item_id"], msgpack.packb(op["data"])) for op in ops],
        )
        self.conn.execute("COMMIT")

    async def write_like_ours(self, ops: list[dict[str, Any]]) -> None:
        """Each op's item state (with its version) and its idempotency record, nothing else:
        no reads, no conflict check, no canonical form."""
        items, records = [], []
        for op in ops:
            self.head += 1
            data = msgpack.packb(op["data"])
            item = ("floor", op["collection"], op["item_id"], self.head, 0, data, op["hlc"], 1)
            items.append(item)
            fingerprint = hashlib.blake2b(data, digest_size=16).digest()
            records.append(("floor", op["op_id"], fingerprint, self.head, 0.0))
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO nx_items (tenant, collection, item_key, version, deleted, data, hlc, "
            "schema_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, collection, "
            "item_key) DO UPDATE SET version = excluded.version, data = excluded.data",
            items,
        )
        self.conn.executemany(
            "INSERT INTO nx_ops (tenant, op_id, fingerprint, version, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            records,
        )
        self.conn.execute("COMMIT")

    async def page(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        return self.conn.execute(
            "SELECT rowid, item_id, data FROM items WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()


class _BarePostgres:
    """psycopg connections, one per request in flight (up to ``connections``, as our
    server's storage keeps); a batch is one transaction with executemany."""

    def __init__(self, dsn: str, connections: int = 10) -> None:
        self.dsn = dsn
        self._idle: list[Any] = []
        self._slots = anyio.Semaphore(connections)
        self.head = 0

    async def _connect(self) -> Any:
        import psycopg  # noqa: PLC0415

        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                yield conn
            finally:
                self._idle.append(conn)

    async def open(self) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bare_items (seq BIGSERIAL, collection TEXT NOT "
                "NULL, item_id TEXT NOT NULL, data BYTEA NOT NULL, UNIQUE (collection, item_id))"
            )
            # The floor: the rows our server must write per op (its own schema).
            for statement in ddl("postgresql"):
                await conn.execute(statement)

    async def write_like_ours(self, ops: list[dict[str, Any]]) -> None:
        """Each op's item state (with its version) and its idempotency record, nothing else
        (no reads, no conflict check, no canonical form), written as our storage writes
        them: one statement per table, the columns as binary arrays (``unnest``)."""
        versions, data, fingerprints = [], [], []
        for _ in ops:
            self.head += 1
            versions.append(self.head)
        for op in ops:
            blob = msgpack.packb(op["data"])
            data.append(blob)
            fingerprints.append(hashlib.blake2b(blob, digest_size=16).digest())
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO nx_items (tenant, collection, item_key, version, deleted, data, "
                "hlc, schema_version) SELECT 'floor', c, k, v, false, d, h, 1 FROM "
                "unnest(%b::text[], %b::text[], %b::bigint[], %b::bytea[], %b::text[]) "
                "AS t(c, k, v, d, h) "
                "ON CONFLICT (tenant, collection, item_key) DO UPDATE SET "
                "version = EXCLUDED.version, data = EXCLUDED.data",
                (
                    [op["collection"] for op in ops],
                    [op["item_id"] for op in ops],
                    versions,
                    data,
                    [op["hlc"] for op in ops],
                ),
            )
            await conn.execute(
                "INSERT INTO nx_ops (tenant, op_id, fingerprint, version, created_at) "
                "SELECT 'floor', o, f, v, 0 FROM unnest(%b::text[], %b::bytea[], %b::bigint[]) "
                "AS t(o, f, v)",
                ([op["op_id"] for op in ops], fingerprints, versions),
            )

    async def upsert(self, ops: list[dict[str, Any]]) -> None:
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO bare_items (collection, item_id, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (collection, item_id) DO UPDATE SET data = excluded.data",
                [(op["collection"], op["item_id"], msgpack.packb(op["data"])) for op in ops],
            )

    async def page(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT seq, item_id, data FROM bare_items WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit),
            )
            return [(r[0], r[1], bytes(r[2])) for r in await cur.fetchall()]


class BareProcess:
    """The bare pipeline server in a subprocess."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.pid = 0

    def __enter__(self) -> BareProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nexus_store.bench._http", "--bare-server", self.database],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(_ANNOUNCE):
            raise RuntimeError(f"the bare server did not start: {line!r}")
        self.base_url = line[len(_ANNOUNCE) :].strip()
        self.pid = self.process.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.base_url}/pull?limit=1", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.05)
            else:
                return self
        raise RuntimeError("the bare server did not answer")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


async def push_bare(
    base_url: str, ops: list[dict[str, Any]], batch: int, *, route: str = "/push"
) -> float:
    """Ops per second posting pre-built op dicts as msgpack to a bare route."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60, verify=_TLS) as client:
        await client.get("/pull", params={"limit": 1})
        start = time.perf_counter()
        for i in range(0, len(ops), batch):
            chunk = ops[i : i + batch]
            response = await client.post(
                route,
                content=msgpack.packb({"ops": chunk}),
                headers={"content-type": "application/msgpack"},
            )
            assert len(msgpack.unpackb(response.content)["acked"]) == len(chunk)
        return len(ops) / (time.perf_counter() - start)


async def pull_bare(base_url: str, limit: int, expected: int) -> float:
    """Changes per second paging the bare route."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60, verify=_TLS) as client:
        start = time.perf_counter()
        cursor, total = 0, 0
        while True:
            body = msgpack.unpackb(
                (await client.get("/pull", params={"cursor": cursor, "limit": limit})).content
            )
            total += len(body["changes"])
            cursor = body["cursor"]
            if not body["has_more"]:
                break
        elapsed = time.perf_counter() - start
    assert total >= expected, (total, expected)
    return total / elapsed
