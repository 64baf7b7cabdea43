"""A throwaway PostgreSQL server for tests and benchmarks, from the ``pgserver`` package.

``pgserver`` ships PostgreSQL binaries as a Python wheel, so no system install is
needed. :class:`TemporaryPostgres` starts one in a temporary directory and stops it
(and removes the directory) on :meth:`~TemporaryPostgres.close`; :func:`shared_postgres`
gives one server per process, started on first use and stopped at exit, which is what
session fixtures in several test folders want::

    @pytest.fixture(scope="session")
    def postgres_dsn() -> str:
        return shared_postgres().dsn
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import threading
import uuid
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["TemporaryPostgres", "shared_postgres"]

_shared: TemporaryPostgres | None = None
_shared_lock = threading.Lock()


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, containers);
        # test runs treat warnings as errors, and the fallback it picks works.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # noqa: PLC0415 - a test-only dependency, loaded on use

    return pgserver


class TemporaryPostgres:
    """A PostgreSQL server running from a temporary directory until closed.

    Args:
        directory: where to keep the data (a new temporary directory by default; it is
            removed on close only if it was made here).

    Raises:
        ImportError: ``pgserver`` is not installed (``pip install pgserver``).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self._owns_directory = directory is None
        base = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="nx-pg-"))
        self.directory = base
        self._server: Any = _pgserver().get_server(base / "pgdata", cleanup_mode="stop")
        self.dsn: str = self._server.get_uri()
        """A ``postgresql://`` URI of the ``postgres`` database (over a Unix socket)."""
        self._closed = False

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URI (a fresh schema for one test)."""
        name = name or f"nx_{uuid.uuid4().hex[:16]}"
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a safe database name: {name!r}")
        import psycopg  # noqa: PLC0415 - the postgres extra

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return str(self._server.get_uri(name))

    def restart(self) -> None:
        """Restart PostgreSQL on the same data (a fast shutdown: open connections are cut).

        For fault tests: clients see their connections fail, then the server come back.
        """
        server = self._server
        _pgserver().pg_ctl(
            ["-w", "-m", "fast", "restart"],
            pgdata=server.pgdata,
            user=server.system_user,
            timeout=60,
        )

    def close(self) -> None:
        """Stop the server and remove its temporary directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.cleanup()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def shared_postgres() -> TemporaryPostgres:
    """The process's shared PostgreSQL server: started on first call, stopped at exit."""
    global _shared  # noqa: PLW0603 - one server per process is the point
    with _shared_lock:
        if _shared is None:
            _shared = TemporaryPostgres()
            atexit.register(_close_shared)
        return _shared


def _close_shared() -> None:
    with contextlib.suppress(Exception):
        if _shared is not None:
            _shared.close()
