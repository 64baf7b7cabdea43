"""The API reference, made from the package's doors: every public subpackage and its ``__all__``.

A door is a package of ``nexus_store`` none of whose path parts starts with ``_`` (the
command line's door excepted: the guide documents the command). Each door gets one page:
its docstring, then every name of its ``__all__``. A name several doors export (the queue's
classes are in ``nexus_store`` and ``nexus_store.queue``) is documented once, in its home
door, the door deepest in the path of the module that defines it; the other doors link to
it. A new public name, or a new door, appears without editing the docs.

Pure functions of a griffe package (no I/O), shared by the page generator
(``gen_reference.py``) and the docs tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import griffe

PACKAGE = "nexus_store"
# Doors the API reference leaves out, with the reason.
NOT_API = {
    "nexus_store.cli": "the command line: its door names only the console script's entry point",
}
REFERENCE_DIR = "reference"


@dataclass(frozen=True)
class Export:
    """One name of one door's ``__all__``."""

    door: str  # the door's dotted path
    name: str
    target: str  # the canonical path of the object it names
    kind: str  # "class", "exception", "function", "attribute", "type alias", "module"

    @property
    def path(self) -> str:
        """The public path: the door's path and the name."""
        return f"{self.door}.{self.name}"


def find_doors(package: griffe.Module) -> list[griffe.Module]:
    """Every door of the package, the package itself first, then by dotted path."""
    found: list[griffe.Module] = []

    def visit(module: griffe.Module) -> None:
        if module.path in NOT_API:
            return
        found.append(module)
        for name, sub in module.modules.items():
            if not name.startswith("_") and sub.is_init_module:
                visit(sub)

    visit(package)
    return sorted(found, key=lambda door: (door.path != package.path, door.path))


def _is_exception(cls: griffe.Class, depth: int = 0) -> bool:
    """Whether a class derives from an exception (by its bases' names, followed in the package)."""
    for base in cls.bases:
        path = str(getattr(base, "canonical_path", base))
        if path.rsplit(".", 1)[-1].endswith(("Error", "Exception", "Warning")):
            return True
        try:
            target = cls.modules_collection[path]
        except (KeyError, griffe.AliasResolutionError):
            continue
        if isinstance(target, griffe.Alias):
            target = target.final_target
        if depth < 20 and isinstance(target, griffe.Class) and _is_exception(target, depth + 1):
            return True
    return False


def _kind(obj: griffe.Object | griffe.Alias) -> str:
    target = obj.final_target if isinstance(obj, griffe.Alias) else obj
    if isinstance(target, griffe.Class):
        return "exception" if _is_exception(target) else "class"
    return target.kind.value.replace("_", " ")


def exports(door: griffe.Module) -> list[Export]:
    """The names of a door's ``__all__``, with what each names (in ``__all__``'s order)."""
    found = []
    for name in door.exports or ():
        obj = door[name]
        target = obj.final_target.path if isinstance(obj, griffe.Alias) else obj.path
        found.append(Export(door.path, name, target, _kind(obj)))
    return found


def homes(doors: list[griffe.Module]) -> dict[str, str]:
    """For each exported object (by canonical path), the door that documents it.

    The home is the door deepest in the object's own path; an object defined outside
    every door that exports it (``FakeClock``, defined at the top, exported by
    ``nexus_store.testing`` only) lives in the first door that exports it.
    """
    chosen: dict[str, tuple[int, int, str]] = {}
    for order, door in enumerate(doors):
        for export in exports(door):
            inside = export.target.startswith(door.path + ".")
            rank = (len(door.path) if inside else -1, -order, door.path)
            if export.target not in chosen or rank[:2] > chosen[export.target][:2]:
                chosen[export.target] = rank
    return {target: rank[2] for target, rank in chosen.items()}


def page_name(door: str) -> str:
    """The reference page of a door, relative to the docs folder."""
    return f"{REFERENCE_DIR}/{door}.md"


GROUPS = [
    ("class", "Classes"),
    ("exception", "Exceptions"),
    ("function", "Functions"),
    ("type alias", "Type aliases"),
    ("attribute", "Constants"),
    ("module", "Modules"),
]


def door_page(door: griffe.Module, home: dict[str, str]) -> str:
    """The Markdown of one door's reference page (mkdocstrings directives)."""
    names = exports(door)
    lines = [
        f"::: {door.path}",
        "    options:",
        "      heading_level: 1",
        "      show_root_full_path: true",
        "      members: false",
        "",
    ]
    if not names:
        lines += ["This door exports nothing yet.", ""]
        return "\n".join(lines)
    own = [export for export in names if home[export.target] == door.path]
    for kind, title in GROUPS:
        group = [export for export in own if export.kind == kind]
        if not group:
            continue
        lines += [f"## {title}", ""]
        for export in group:
            lines += [
                f"::: {export.path}",
                "    options:",
                "      heading_level: 3",
                "",
            ]
    others = [export for export in names if home[export.target] != door.path]
    if others:
        lines += [
            "## Also exported here",
            "",
            "Documented in the door that keeps them:",
            "",
            "| name | documented in |",
            "| --- | --- |",
        ]
        for export in others:
            where = home[export.target]
            name = export.target.rsplit(".", 1)[-1]
            lines.append(f"| [`{export.name}`][{where}.{name}] | `{where}` |")
        lines.append("")
    return "\n".join(lines)


def summary_line(door: griffe.Module) -> str:
    """The first line of a door's docstring, its Sphinx roles shown as code."""
    text = door.docstring.value if door.docstring else ""
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", first)
    return first.replace("``", "`")


def index_page(doors: list[griffe.Module]) -> str:
    """The reference's front page: one line per door."""
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings of every public name: one page per door (a public",
        "package), listing the names of its `__all__`. Import a name from the door it is",
        "listed under; modules whose names start with `_` are private.",
        "",
        "| door | what it holds |",
        "| --- | --- |",
    ]
    for door in doors:
        lines.append(f"| [`{door.path}`]({door.path}.md) | {summary_line(door)} |")
    lines.append("")
    return "\n".join(lines)


def reference_pages(package: griffe.Module) -> dict[str, str]:
    """Every page of the API reference (path relative to the docs folder -> Markdown).

    Also ``reference/SUMMARY.md``, the section's navigation (mkdocs-literate-nav).
    """
    doors = find_doors(package)
    home = homes(doors)
    pages = {f"{REFERENCE_DIR}/index.md": index_page(doors)}
    nav = ["* [Overview](index.md)"]
    for door in doors:
        pages[page_name(door.path)] = door_page(door, home)
        nav.append(f"* [{door.path}]({door.path}.md)")
    pages[f"{REFERENCE_DIR}/SUMMARY.md"] = "\n".join(nav) + "\n"
    return pages


def load_package(search_path: str) -> griffe.Module:
    """The package as griffe sees it (static analysis: nothing is imported)."""
    package = griffe.load(PACKAGE, search_paths=[search_path], resolve_aliases=False)
    assert isinstance(package, griffe.Module)
    return package
