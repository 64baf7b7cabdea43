"""Schema migrations declared once, found by every process that opens the file.

A model changes (a field renamed, a type changed): its store gets a higher
``schema_version`` and a :class:`Migrations` object with one step per version, each a
function from a record of version ``n`` (a dict, the item's JSON form) to version ``n + 1``::

    migrations = Migrations()

    @migrations.step("note", 1)        # note v1 -> v2: 'title' became 'name'
    def title_to_name(data: dict) -> dict:
        data["name"] = data.pop("title")
        return data

    store = NexusStore("app.db", model=Note, schema_version=2, migrations=migrations)

Where they apply:

- **local rows**: opening the store upgrades every row of an older version, in one
  transaction (a step that fails stops the open with :class:`~nexus_store.MigrationError`
  naming the row; nothing changes), so no value stays behind in an old column;
- **queued ops**: payloads of an older version are upgraded when they are leased, in any
  process: the store records its version in the file (``nx_meta``), and the import path of
  its migrations (``module:attribute``) when the object is a module-level name; a worker,
  or ``nexus-store sync``, imports them from there (``nexus-store worker --migrations
  module:attr`` gives the path once and records it). An op with no path to the current
  version is dead-lettered with the reason, never sent;
- **pulled changes** that do not fit the model are tried through the steps (from the
  newest older version down) before they are quarantined.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ._exceptions import MigrationError

__all__ = ["MigrationStep", "Migrations", "load_migrations"]

MigrationStep = Callable[[dict[str, Any]], dict[str, Any]]
"""Upgrades one record (a dict) from schema version ``n`` to ``n + 1``."""


class Migrations:
    """The migration steps of a file's collections.

    Args:
        steps: ``{(collection, from_version): step}`` to start with.
    """

    def __init__(self, steps: Mapping[tuple[str, int], MigrationStep] | None = None) -> None:
        self._steps: dict[tuple[str, int], MigrationStep] = {}
        frame = sys._getframe(1)  # where the object is made: its import path
        self._module: str | None = frame.f_globals.get("__name__")
        for (collection, version), step in (steps or {}).items():
            self.add(collection, version, step)

    def add(self, collection: str, from_version: int, step: MigrationStep) -> None:
        """Register the step that upgrades ``collection`` from ``from_version``.

        Raises:
            ValueError: a bad collection or version, or a step that is not callable.
        """
        if not isinstance(collection, str) or not collection:
            raise ValueError(f"collection must be a non-empty string, not {collection!r}")
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise ValueError(f"from_version must be an int >= 1, not {from_version!r}")
        if not callable(step):
            raise ValueError("a migration step must be callable")  # noqa: TRY004
        self._steps[(collection, from_version)] = step

    def step(self, collection: str, from_version: int) -> Callable[[MigrationStep], MigrationStep]:
        """Decorator form of :meth:`add`."""

        def register(step: MigrationStep) -> MigrationStep:
            self.add(collection, from_version, step)
            return step

        return register

    @property
    def steps(self) -> dict[tuple[str, int], MigrationStep]:
        """Every step, keyed by ``(collection, from_version)``."""
        return dict(self._steps)

    def upgrade(
        self, collection: str, data: dict[str, Any], from_version: int, to_version: int
    ) -> dict[str, Any]:
        """Run the steps taking ``data`` from one version to another (on a copy).

        Raises:
            MigrationError: a step is missing, fails, or returns something else than a dict.
        """
        return run_steps(self._steps, collection, data, from_version, to_version)

    @property
    def import_path(self) -> str | None:
        """``module:attribute`` naming this object, if it is a module-level name of an
        importable module (not ``__main__``); other processes import it from there."""
        module = sys.modules.get(self._module or "")
        if module is None or self._module == "__main__":
            return None
        for name, value in vars(module).items():
            if value is self:
                return f"{self._module}:{name}"
        return None

    def __repr__(self) -> str:
        return f"Migrations({sorted(self._steps)})"


def run_steps(
    steps: Mapping[tuple[str, int], MigrationStep],
    collection: str,
    data: dict[str, Any],
    from_version: int,
    to_version: int,
) -> dict[str, Any]:
    """Upgrade a record through ``steps`` (the record is copied first).

    Raises:
        MigrationError: a step is missing, fails, or returns something else than a dict.
    """
    value: Any = dict(data)
    for version in range(from_version, to_version):
        step = steps.get((collection, version))
        if step is None:
            raise MigrationError(
                f"no migration registered for {collection!r} from schema v{version} "
                f"to v{version + 1}"
            )
        try:
            value = step(value)
        except Exception as exc:  # a user step may raise anything: it becomes the reason
            raise MigrationError(
                f"migration of {collection!r} from schema v{version} failed: {exc!r}"
            ) from exc
        if not isinstance(value, dict):
            raise MigrationError(
                f"migration of {collection!r} from schema v{version} returned "
                f"{type(value).__name__}, not a dict"
            )
    return value  # type: ignore[no-any-return]


def load_migrations(path: str) -> Migrations:
    """Import a :class:`Migrations` object from ``module:attribute``.

    Raises:
        MigrationError: the path is malformed, cannot be imported, or names something else.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise MigrationError(f"migrations must be given as module:attribute, not {path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary code: any failure is the reason
        raise MigrationError(
            f"cannot import the migrations module {module_name!r}: {exc!r}"
        ) from exc
    found = getattr(module, attribute, None)
    if not isinstance(found, Migrations):
        raise MigrationError(f"{path!r} is not a nexus_store.Migrations object")
    return found
