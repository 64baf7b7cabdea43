"""Open the storage a URL names; each implementation loads only when chosen.

The implementations import the seam (:mod:`._base`), never this module, so opening one
by URL makes no loop of imports.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from ..._database import Durability
from ._base import Storage

__all__ = ["open_storage"]


def open_storage(url: str) -> Storage:
    """Make the storage a URL names.

    Args:
        url: ``"memory://"``; ``"sqlite:///relative/path.db"`` or
            ``"sqlite:////absolute/path.db"`` (SQLAlchemy's convention), with an optional
            ``?durability=normal`` (``full`` by default: an acknowledged push survives
            power loss); or ``"postgresql://..."`` (any libpq URI; ``postgres://`` too).

    Raises:
        ValueError: the URL names no known storage or is malformed.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"not a storage URL (expected scheme://...): {url!r}")
    if scheme == "memory":
        from ._memory import MemoryStorage  # noqa: PLC0415 - load the chosen one only

        return MemoryStorage()
    if scheme == "sqlite":
        path, durability = _sqlite_target(url)
        from ._sqlite import SqliteStorage  # noqa: PLC0415

        return SqliteStorage(path, durability=durability)
    if scheme in ("postgresql", "postgres"):
        from ._postgres import PostgresStorage  # noqa: PLC0415

        return PostgresStorage(url)
    raise ValueError(f"unknown storage scheme {scheme!r} in {url!r}")


def _sqlite_target(url: str) -> tuple[str, Durability]:
    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError(
            f"an SQLite URL has no host: use sqlite:///relative or sqlite:////abs: {url!r}"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ValueError(f"an SQLite URL needs a file path: {url!r}")
    durability: Durability = "full"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "durability" or value not in ("full", "normal"):
            raise ValueError(f"unknown SQLite URL option {name}={value!r} (durability=full|normal)")
        durability = "full" if value == "full" else "normal"
    return path, durability
