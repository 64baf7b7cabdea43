"""Payloads of older schema versions: registered steps, recorded versions, upgrades at lease.

The current version of a collection is the higher of the one declared on the queue and
the one its store recorded in the file, so a process without the model (a worker)
upgrades what the app's newer model needs. Steps are those registered on the queue, or
else those at the import path the file records (loaded once). An op that cannot be
upgraded is dead-lettered with the reason, never sent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from .. import _codec
from .._exceptions import CodecError, MigrationError
from .._migrations import load_migrations, run_steps
from ._base import QueueBase
from ._schema import _HEAD

__all__ = ["Migration", "upgrade_payload"]

Migration = Callable[[dict[str, Any]], dict[str, Any]]
"""A step that upgrades one payload (a decoded dict) from version ``n`` to ``n + 1``."""

_HAS_META = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_meta'"
_RECORDED_VERSIONS = (
    "SELECT key, value FROM nx_meta WHERE key >= 'schema_version:' AND key < 'schema_version;'"
)
_UPGRADED = "UPDATE nx_queue SET payload = ?, schema_version = ? WHERE seq = ?"


class _MissingSteps(dict[tuple[str, int], Migration]):
    """No steps: looking one up fails with the reason the file's migrations did not load."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def get(self, key: Any, default: Any = None) -> Any:
        collection, version = key
        raise MigrationError(
            f"no migration registered for {collection!r} from schema v{version} to "
            f"v{version + 1}{self.reason}"
        )


def upgrade_payload(
    payload: bytes,
    *,
    collection: str,
    from_version: int,
    to_version: int,
    steps: Mapping[tuple[str, int], Migration],
) -> bytes:
    """Run the migration steps that take ``payload`` from one schema version to another.

    Raises:
        MigrationError: a step is missing, fails, or returns something that is not a dict,
            or the payload does not decode to a dict.
    """
    try:
        value = _codec.decode(payload)
    except CodecError as exc:
        raise MigrationError(f"cannot decode payload of schema v{from_version}: {exc}") from exc
    if not isinstance(value, dict):
        raise MigrationError(f"payload of schema v{from_version} is not a mapping")
    value = run_steps(steps, collection, value, from_version, to_version)
    try:
        return _codec.encode(value)
    except CodecError as exc:
        raise MigrationError(f"cannot encode migrated payload: {exc}") from exc


class _Upgrading(QueueBase):
    """The queue's schema versions: declared, registered, and applied to leased rows."""

    # -- schema versions ---------------------------------------------------------------------

    def register_migration(self, collection: str, from_version: int, step: Migration) -> None:
        """Register the step that upgrades a payload of ``collection`` by one version.

        Args:
            collection: the collection.
            from_version: the version the step reads (it returns ``from_version + 1``).
            step: ``dict -> dict`` on the decoded payload.

        Raises:
            ValueError: for a bad argument.
        """
        self._check_collection(collection)
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise ValueError(f"from_version must be an int >= 1, not {from_version!r}")
        if not callable(step):
            raise ValueError("a migration step must be callable")  # noqa: TRY004
        self._steps[(collection, from_version)] = step

    def migration_steps(self) -> list[tuple[str, int]]:
        """The registered migration steps, as ``(collection, from_version)`` pairs."""
        return sorted(self._steps)

    def migration_step_map(self) -> dict[tuple[str, int], Migration]:
        """The registered migration steps, keyed by ``(collection, from_version)``."""
        return dict(self._steps)

    def set_schema_version(self, collection: str, version: int) -> None:
        """Declare the current schema version of ``collection``.

        Ops queued with an older version are upgraded when leased.

        Raises:
            ValueError: for a bad argument.
        """
        self._check_collection(collection)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be an int >= 1, not {version!r}")
        self._versions[collection] = version

    def schema_version(self, collection: str) -> int | None:
        """The declared current schema version of ``collection``, if any."""
        return self._versions.get(collection)

    def _upgrade_rows(
        self, conn: sqlite3.Connection, rows: list[Any], now: float
    ) -> tuple[list[Any], int]:
        """Upgrade rows of an older schema version; dead-letter those that cannot be.

        The current version of a collection is the higher of the one declared here and the
        one its store recorded in the file, so a process without the model (a worker)
        upgrades what the app's newer model needs. Steps are those registered here, or else
        those at the import path the file records (loaded once).
        """
        versions = self._versions
        if any(row[2] not in versions for row in rows):
            # A collection this queue has no version for (a worker, the sync command): the
            # version its store recorded in the file.
            versions = self._target_versions(conn)
        if not versions:
            return rows, 0
        good: list[Any] = []
        failed = 0
        for row in rows:
            target = versions.get(row[2])
            if target is None or type(row[7]) is not int or row[7] >= target:
                good.append(row)
                continue
            payload = row[6]
            if payload is not None:
                try:
                    payload = upgrade_payload(
                        payload,
                        collection=row[2],
                        from_version=row[7],
                        to_version=target,
                        steps=self._steps_for(conn, row[2]),
                    )
                except MigrationError as exc:
                    failed += 1
                    self._kill(
                        conn,
                        seq=row[0],
                        collection=row[2],
                        item_id=row[3],
                        attempts=row[12],
                        reason=str(exc),
                        now=now,
                        head=row[11] == _HEAD,
                    )
                    continue
            conn.execute(_UPGRADED, (payload, target, row[0]))
            good.append((*row[:6], payload, target, *row[8:]))
        return good, failed

    def _target_versions(self, conn: sqlite3.Connection) -> dict[str, int]:
        """The current schema version of each collection (declared here, or recorded)."""
        versions = self._versions
        if not self._has_meta:
            if conn.execute(_HAS_META).fetchone() is None:
                return versions  # a bare queue: no store recorded anything
            self._has_meta = True  # a table, once there, stays
        recorded = conn.execute(_RECORDED_VERSIONS).fetchall()
        if recorded:
            versions = dict(versions)
            for key, value in recorded:
                collection = key.removeprefix("schema_version:")
                if type(value) is int and value > versions.get(collection, 0):
                    versions[collection] = value
        return versions

    def _steps_for(
        self, conn: sqlite3.Connection, collection: str
    ) -> Mapping[tuple[str, int], Migration]:
        """The steps to upgrade a collection's payloads: registered here, or else imported
        from the path the file records (once per queue)."""
        if any(c == collection for c, _ in self._steps):
            return self._steps
        if self._loaded is None:
            row = None
            if conn.execute(_HAS_META).fetchone() is not None:
                row = conn.execute("SELECT value FROM nx_meta WHERE key = 'migrations'").fetchone()
            self._loaded = {}
            if row is not None and isinstance(row[0], str):
                try:
                    self._loaded = load_migrations(row[0]).steps
                except MigrationError as exc:
                    self._load_error = f" ({exc})"
        if not any(c == collection for c, _ in self._loaded):
            return _MissingSteps(self._load_error)
        return self._loaded
