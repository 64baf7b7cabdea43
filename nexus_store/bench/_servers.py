"""``nexus-store bench server``: local servers to measure, and their database read directly.

:class:`LocalServers` starts one or more ``nexus-store serve`` processes on 127.0.0.1
(:class:`~nexus_store.testing.ServerProcess`) on the storage ``--database`` names:

- ``sqlite`` (the default): a file in a temporary folder; one server process (SQLite
  has one writer; several processes would only take turns);
- ``postgres``: a PostgreSQL of its own from the ``pgserver`` package
  (:class:`~nexus_store.testing.TemporaryPostgres`), two server processes by default;
- a URL: ``sqlite:///path.db``, or ``postgresql://...`` naming a PostgreSQL server you run
  (an installed one); the benchmark writes into that database (tenant ``bench``, a fresh
  collection per run).

:class:`DatabaseCounter` counts a run's items in the server's own tables (``nx_items``
for the items, ``nx_ops`` for the ops applied: more ops than items is a duplicate).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import secrets
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from ..testing import ServerProcess, ServerStartError, TemporaryPostgres
from ._loadrun import BenchRunError
from ._plan import BenchInputError
from ._verify import Tally, Verification

__all__ = ["DatabaseCounter", "LocalServers", "missing_for", "resolve_database"]

TENANT = "bench"
WIRE_TENANT = "bench-wire"


def resolve_database(database: str) -> str:
    """``"sqlite"``, ``"postgres"`` or a storage URL, checked.

    Raises:
        BenchInputError: none of those.
    """
    name = database.strip()
    if name.lower() in ("sqlite", "postgres", "postgresql", "pgserver"):
        return "postgres" if name.lower() != "sqlite" else "sqlite"
    scheme = name.partition("://")[0].lower()
    if scheme in ("sqlite", "postgresql", "postgres"):
        return name
    raise BenchInputError(
        f"--database takes sqlite, postgres, sqlite:///FILE or postgresql://URL, not {database!r}"
    )


def _sqlite_path(url: str) -> str:
    path = urlsplit(url).path
    return path[1:] if path.startswith("/") else path


def missing_for(kind: str) -> list[str]:
    """The packages a local server on ``kind`` storage needs that cannot be imported."""
    needed = ["starlette", "uvicorn", "jwt"]
    if kind == "postgres":
        needed.append("psycopg")
    return [name for name in needed if importlib.util.find_spec(name) is None]


class LocalServers:
    """Server processes on 127.0.0.1 over one storage (see the module docstring).

    Args:
        database: what :func:`resolve_database` accepts.
        servers: server processes (``None``: 1 on SQLite, 2 on PostgreSQL).
        max_batch: the most ops per push the servers take.
    """

    def __init__(self, database: str, *, servers: int | None, max_batch: int) -> None:
        self.database = resolve_database(database)
        self.kind = "sqlite" if self.database.startswith("sqlite") else "postgres"
        self.count = servers if servers is not None else (1 if self.kind == "sqlite" else 2)
        if self.count < 1:
            raise BenchInputError("--servers must be at least 1")
        missing = missing_for(self.kind)
        if missing:
            raise BenchInputError(
                f"starting a server here needs {', '.join(missing)}: "
                'pip install "nexus-store[bench]"'
            )
        if self.kind == "sqlite" and self.count > 1:
            raise BenchInputError(
                "several server processes need PostgreSQL storage (--database postgres): "
                "SQLite has one writer"
            )
        self.max_batch = max(1000, max_batch)
        self.token = secrets.token_urlsafe(16)
        self.wire_token = "bench-token"  # the token the wire baselines send (._http)
        self.url = ""
        self.processes: list[ServerProcess] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._postgres: TemporaryPostgres | None = None
        self.label = ""

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="nexus-bench-server-")
        if self.database == "sqlite":
            self.url = f"sqlite:///{self._tmp.name}/server.db"
            self.label = "SQLite"
        elif self.database == "postgres":
            try:
                self._postgres = TemporaryPostgres()
            except ImportError as exc:
                raise BenchInputError(
                    "--database postgres starts a PostgreSQL from the pgserver package: "
                    'pip install "nexus-store[bench]", or give --database postgresql://URL '
                    "of a server you run"
                ) from exc
            self.url = self._postgres.create_database("nexus_bench")
            self.label = "PostgreSQL (pgserver)"
        else:
            self.url = self.database
            self.label = "SQLite" if self.kind == "sqlite" else "PostgreSQL"
        if self.count > 1:
            self.label += f", {self.count} server processes"
        tokens = {self.token: TENANT, self.wire_token: WIRE_TENANT}
        for _ in range(self.count):
            server = ServerProcess(self.url, tokens=tokens, max_batch=self.max_batch)
            try:
                server.start()
            except (ServerStartError, OSError) as exc:
                raise BenchRunError(f"the server did not start: {_last_line(exc)}") from exc
            self.processes.append(server)

    @property
    def urls(self) -> list[str]:
        """The servers' base URLs."""
        return [p.base_url for p in self.processes]

    @property
    def pids(self) -> list[int]:
        """The servers' process ids."""
        return [p.pid for p in self.processes]

    @property
    def database_pid(self) -> int | None:
        """The main process of the PostgreSQL started here (``None``: none started)."""
        if self._postgres is None:
            return None
        # PostgreSQL writes its main process id on the first line of postmaster.pid.
        with contextlib.suppress(OSError, ValueError, IndexError):
            marker = self._postgres.directory / "pgdata" / "postmaster.pid"
            return int(marker.read_text().splitlines()[0])
        return None

    def scratch_database(self, folder: str) -> str | None:
        """A storage of its own for a baseline beside these servers: a file in
        ``folder`` (SQLite), a new database (the benchmark's own PostgreSQL), or ``None``
        (a PostgreSQL you run is not written to beyond the benchmark's tenant)."""
        if self.kind == "sqlite":
            return f"{folder}/bare.db"
        if self._postgres is not None:
            return self._postgres.create_database(f"nexus_bare_{secrets.token_hex(4)}")
        return None

    def counter(self) -> DatabaseCounter:
        """Counts runs' items in this storage."""
        return DatabaseCounter(self.url)

    def close(self) -> None:
        """Stop the servers and whatever was started for them."""
        for server in self.processes:
            with contextlib.suppress(Exception):
                server.stop()
        self.processes = []
        if self._postgres is not None:
            self._postgres.close()
            self._postgres = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _item_id(key: str) -> object:
    """The item id a stored key holds (the server keeps ids as canonical JSON)."""
    try:
        return json.loads(key)
    except ValueError:
        return key


class DatabaseCounter:
    """Counts a run's items, and the ops applied for it, in the server's tables.

    Call :meth:`mark` before a run (it notes the ops applied so far for the tenant), then
    call the counter with the run's collection and acknowledged bitmaps.
    """

    def __init__(self, url: str, tenant: str = TENANT) -> None:
        self.url = url
        self.tenant = tenant
        self._ops_before = 0

    def _rows(self, sql: str, params: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        """The rows of a query, read as they come (a run may hold millions of items)."""
        if self.url.startswith("sqlite"):
            uri = Path(_sqlite_path(self.url)).absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True)
            try:
                yield from conn.execute(sql, params)
            finally:
                conn.close()
            return
        import psycopg  # noqa: PLC0415 - the postgres extra

        with psycopg.connect(self.url) as pg, pg.cursor(name="bench_count") as cursor:
            cursor.execute(sql.replace("?", "%s"), params)
            yield from cursor

    def _ops(self) -> int:
        (row,) = self._rows("SELECT count(*) FROM nx_ops WHERE tenant = ?", (self.tenant,))
        return int(row[0])

    def mark(self) -> None:
        """Note the ops applied so far (before a run)."""
        self._ops_before = self._ops()

    def __call__(self, collection: str, acked: Mapping[int, bytes]) -> Verification:
        tally = Tally(acked)
        for (key,) in self._rows(
            "SELECT item_key FROM nx_items WHERE tenant = ? AND collection = ?",
            (self.tenant, collection),
        ):
            tally.see(_item_id(key))
        applied = self._ops() - self._ops_before
        return tally.result("database", extra_ops=applied - tally.items)
