"""A griffe extension: the docstrings' Sphinx roles become cross-references on the site.

The package's docstrings name other objects the way Sphinx does (``:class:`SyncRunner```,
``:meth:`~nexus_store.NexusStore.sync```). This turns each role into a mkdocstrings
cross-reference (``[SyncRunner][nexus_store.sync.engine._runner.SyncRunner]``), resolved
from where the docstring is, as Python would resolve the name there:

- a name that resolves to a documented object (exported by a door, or a member of one)
  becomes a link;
- a name that resolves to a private object (``:mod:`._pause```) stays as code: the
  reference documents public names only;
- a name that resolves to nothing stays a link to that name, so the ``--strict`` build
  fails on it: a stale name in a docstring is a bug to fix in the docstring.

reST literal-block markers (a paragraph ending in ``::``) become a plain colon.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import griffe

sys.path.insert(0, str(Path(__file__).parent))
from doors import find_doors

ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|mod|data|exc|obj|const):`([^`]+)`")
LITERAL_MARKER = re.compile(r"(?m)^(.*?)::$")


def _documented(package: griffe.Module) -> set[str]:
    """Canonical paths of everything the reference renders."""
    found: set[str] = set()

    def add(obj: griffe.Object | griffe.Alias, depth: int) -> None:
        try:
            target = obj.final_target if isinstance(obj, griffe.Alias) else obj
        except griffe.AliasResolutionError:
            return
        if target.canonical_path in found or depth > 4:
            return
        found.add(target.canonical_path)
        if isinstance(target, griffe.Class):
            for name, member in target.all_members.items():
                if not name.startswith("_"):
                    add(member, depth + 1)

    for door in find_doors(package):
        found.add(door.path)
        for name in door.exports or ():
            add(door[name], 0)
    return found


def _absolute(obj: griffe.Object, target: str, package: griffe.Module) -> str:
    """The dotted path a role's target names, seen from the docstring's object."""
    if target.startswith("."):
        module = obj if isinstance(obj, griffe.Module) else obj.module
        base = module.path if module.is_init_module else module.path.rsplit(".", 1)[0]
        dots = len(target) - len(target.lstrip("."))
        for _ in range(dots - 1):
            base = base.rsplit(".", 1)[0]
        return f"{base}.{target.lstrip('.')}"
    if target.split(".", 1)[0] == package.name:
        return target
    first, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        if isinstance(scope, griffe.Class) and first in scope.all_members:
            return f"{scope.path}.{target}"  # a member, inherited ones included
        try:
            resolved = scope.resolve(first)
        except griffe.NameResolutionError:
            scope = scope.parent
            continue
        return f"{resolved}.{rest}" if rest else resolved
    for door in find_doors(package):
        if first in (door.exports or ()):
            return f"{door.path}.{target}"
    return target


def _lookup(package: griffe.Module, path: str) -> griffe.Object | None:
    try:
        found = package.modules_collection[path]
        return found.final_target if isinstance(found, griffe.Alias) else found
    except (KeyError, griffe.AliasResolutionError):
        return None


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite the docstrings of the whole package (names resolve across modules)."""
        documented = _documented(pkg)

        def rewrite(obj: griffe.Object) -> None:
            if obj.docstring is not None:
                obj.docstring.value = self.convert(obj, obj.docstring.value, pkg, documented)
            for member in obj.members.values():
                if not isinstance(member, griffe.Alias):
                    rewrite(member)

        rewrite(pkg)

    @staticmethod
    def convert(obj: griffe.Object, text: str, package: griffe.Module, documented: set[str]) -> str:
        """The docstring with its roles as cross-references (or code) and no ``::`` markers."""

        def replace(match: re.Match[str]) -> str:
            target = match.group(2).strip()
            short = target.startswith("~")
            target = target.lstrip("~").removesuffix("()")
            shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
            path = _absolute(obj, target, package)
            found = _lookup(package, path)
            if found is None:
                return f"[`{shown}`][{path}]"  # unresolved: the strict build reports it
            if found.canonical_path in documented:
                return f"[`{shown}`][{found.canonical_path}]"
            return f"`{shown}`"

        text = ROLE.sub(replace, text)
        return LITERAL_MARKER.sub(lambda m: f"{m.group(1)}:" if m.group(1).strip() else "", text)
