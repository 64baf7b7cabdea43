"""The package's layout: imports run downward only, and the subpackages form no loop.

Every module of ``nexus_store`` belongs to a room, and every room to a layer (the map
below, lowest layer first; the most specific prefix wins). A module may import a module
of its own room, or of a room on a lower layer; nothing else. Every import statement
counts, also one inside a function (a lazy import) or under ``TYPE_CHECKING``. Imports by
a string are not seen here: the doors' lazy tables name modules of their own package,
and the package's door (the top layer) loads the background service on first use.

The README's "How the code is laid out" tells the same story in words.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import nexus_store

# (layer, room, module prefixes). The package's own door and ``__main__`` sit on top.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    # Small shared foundations: exceptions, clock, codec, database, the remote seam
    # (what a backend is: _remote) and the HTTP wire protocol both sides speak (_http_api).
    (
        0,
        "foundations",
        (
            "nexus_store._backoff",
            "nexus_store._blob_api",
            "nexus_store._broadcast",
            "nexus_store._clock",
            "nexus_store._codec",
            "nexus_store._database",
            "nexus_store._exceptions",
            "nexus_store._gc",
            "nexus_store._hlc",
            "nexus_store._http_api",
            "nexus_store._loop",
            "nexus_store._migrations",
            "nexus_store._offsets",
            "nexus_store._priority",
            "nexus_store._remote",
            "nexus_store._trusted",
            "nexus_store._unclosed",
            "nexus_store._version",
        ),
    ),
    # The local side's tables (items, meta, change log, quarantine); the remote side's
    # server (core, storage, app); the device probes.
    (
        1,
        "local tables",
        (
            "nexus_store._changelog",
            "nexus_store._local",
            "nexus_store._meta",
            "nexus_store._quarantine",
            "nexus_store._tablespec",
            "nexus_store._watch",
        ),
    ),
    (1, "server", ("nexus_store.server",)),
    (1, "device", ("nexus_store.sync.device",)),
    # The queue; the backends (the memory and PostgreSQL backends are the server's core in
    # the app's process, so they sit above the server).
    (2, "queue", ("nexus_store.queue",)),
    (2, "backends", ("nexus_store.backends",)),
    # Files: the local blob store, transfer ops, the tus client; over the queue, the
    # backends and the server's blob service (what an in-process backend's files go to).
    (3, "files", ("nexus_store.files",)),
    # Moving data: one sync run over the queue, the local tables and the files.
    (4, "engine", ("nexus_store.sync.engine",)),
    (4, "check", ("nexus_store._check",)),
    # The store facade: its sync() is one engine run; its files API uses the files room.
    (
        5,
        "store",
        (
            "nexus_store._store",
            "nexus_store._store_base",
            "nexus_store._store_files",
            "nexus_store._store_open",
            "nexus_store._store_reads",
            "nexus_store._store_sync",
        ),
    ),
    # The background service's base (service, config, status, task, no-op, bridge).
    (
        6,
        "service",
        (
            "nexus_store.sync._bridge",
            "nexus_store.sync._changes",
            "nexus_store.sync._config",
            "nexus_store.sync._decisions",
            "nexus_store.sync._job_control",
            "nexus_store.sync._jobs",
            "nexus_store.sync._noop",
            "nexus_store.sync._pokes",
            "nexus_store.sync._quick_read",
            "nexus_store.sync._service",
            "nexus_store.sync._service_base",
            "nexus_store.sync._store_task",
            "nexus_store.sync._task",
            "nexus_store.sync._triggers",
        ),
    ),
    # The schedulers, each with its service adapter.
    (7, "workmanager", ("nexus_store.sync.workmanager",)),
    (7, "bgtask", ("nexus_store.sync.bgtask",)),
    # What chooses and runs a scheduler: the factory, the worker, and sync's door.
    (
        8,
        "service choice",
        (
            "nexus_store.sync.__init__",
            "nexus_store.sync._factory",
            "nexus_store.sync._wal_watch",
            "nexus_store.sync._worker",
            "nexus_store.sync._worker_lease",
        ),
    ),
    (9, "test kit", ("nexus_store.testing",)),
    (10, "dashboard", ("nexus_store.dashboard",)),
    (10, "bench", ("nexus_store.bench",)),
    (11, "cli", ("nexus_store.cli",)),
    (12, "door", ("nexus_store.__init__", "nexus_store.__main__")),
]

ROOT = Path(nexus_store.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _place(module: str) -> tuple[int, str] | None:
    """The (layer, room) of a module: the entry with the longest matching prefix.

    A prefix covers the module of that name and, for a package, its submodules;
    ``package.__init__`` names the package's door alone.
    """
    best: tuple[int, tuple[int, str]] | None = None
    for layer, room, prefixes in LAYERS:
        for prefix in prefixes:
            door = prefix.removesuffix(".__init__")
            matches = (
                module == door
                if door != prefix
                else module == prefix or module.startswith(prefix + ".")
            )
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), (layer, room))
    return None if best is None else best[1]


def _at_import_time(tree: ast.Module) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported (not in functions or classes,
    not under ``if TYPE_CHECKING``)."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo += [*node.body, *node.orelse]
        elif isinstance(node, ast.Try):
            todo += [*node.body, *node.orelse, *node.finalbody]
            todo += [stmt for handler in node.handlers for stmt in handler.body]


def _imports(
    module: str, path: Path, modules: dict[str, Path], *, runtime: bool = False
) -> Iterator[tuple[str, int]]:
    """The package's modules that ``module`` imports, by line: in any import statement, or
    (``runtime``) only in those that run when the module is imported."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in _at_import_time(tree) if runtime else ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # ``from package import submodule`` depends on the submodule; any other name
            # comes from the package's door.
            submodules = [f"{source}.{alias.name}" for alias in node.names]
            targets = [name for name in submodules if name in modules]
            if len(targets) < len(submodules):
                targets.append(source)
        else:
            continue
        for target in targets:
            if target in modules:
                yield target, node.lineno


def _edges(*, runtime: bool = False) -> list[tuple[str, str, int]]:
    modules = _modules()
    return [
        (module, target, line)
        for module, path in modules.items()
        for target, line in _imports(module, path, modules, runtime=runtime)
        if target != module
    ]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles a depth-first search meets (each closed by an edge back to its trail)."""
    colour: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        colour[node] = "grey"
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == "grey":
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in colour:
                visit(nxt, [*trail, nxt])
        colour[node] = "black"

    for node in sorted(graph):
        if node not in colour:
            visit(node, [node])
    return cycles


def test_every_module_has_a_place() -> None:
    """Each module of the package belongs to a room of the layer map."""
    assert [m for m in _modules() if _place(m) is None] == []


def test_imports_run_downward_only() -> None:
    """A module imports its own room or rooms on lower layers, never a room beside or above."""
    upward = []
    for module, target, line in _edges():
        (layer, room), (target_layer, target_room) = _place(module), _place(target)  # type: ignore[misc]
        if room != target_room and target_layer >= layer:
            upward.append(
                f"{module}:{line} ({room}, layer {layer}) imports {target} "
                f"({target_room}, layer {target_layer})"
            )
    assert upward == []


def _subpackage(module: str) -> str:
    """The top-level subpackage a module belongs to; each root-level module stands alone."""
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_subpackages() -> None:
    """The graph of imports between top-level subpackages (and root modules) has no cycle."""
    graph: dict[str, set[str]] = {}
    for module, target, _ in _edges():
        source, sink = _subpackage(module), _subpackage(target)
        if source != sink:
            graph.setdefault(source, set()).add(sink)
    assert _cycles(graph) == []


def test_no_module_imports_itself_back_while_it_loads() -> None:
    """No loop of imports runs at import time, inside a room either (types and lazy
    imports aside), so any module can be the first one imported."""
    graph: dict[str, set[str]] = {}
    for module, target, _ in _edges(runtime=True):
        graph.setdefault(module, set()).add(target)
    assert _cycles(graph) == []


def test_the_layer_map_names_only_modules_that_exist() -> None:
    """Every prefix of the map matches a module (a stale entry would hide nothing, but lie)."""
    modules = _modules()
    stale = [
        prefix
        for _, _, prefixes in LAYERS
        for prefix in prefixes
        if prefix.removesuffix(".__init__") not in modules
    ]
    assert stale == []
