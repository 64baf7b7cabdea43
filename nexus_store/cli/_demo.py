"""``nexus-store demo``: the offline-first story end to end, on this machine."""

from __future__ import annotations

import importlib

import typer
from rich.console import Console

from ._app import app
from ._errors import fail


@app.command("demo")
def demo(
    items: int = typer.Option(3000, min=100, max=100_000, help="Items saved while offline."),
) -> None:
    """Save offline, start a real sync server, sync by priority, pull an edit back.

    Runs a `nexus-store serve` subprocess on 127.0.0.1 with SQLite storage in a temporary
    folder, and removes everything when done. Exit code 1 if any check fails.
    """
    try:  # the demo starts a real sync server: say so now rather than in its log
        importlib.import_module("starlette")
        importlib.import_module("uvicorn")
    except ImportError as exc:
        fail("demo", f"the demo runs a sync server: pip install 'nexus-store[server]' ({exc})")
    from ..testing._server import ServerStartError  # noqa: PLC0415
    from ._demo_run import run_demo  # noqa: PLC0415 - keeps `nexus-store --help` fast

    try:
        result = run_demo(Console(), items=items)
    except ServerStartError as exc:
        fail("demo", f"the sync server did not start: {str(exc).splitlines()[-1]}", 1)
    raise typer.Exit(0 if result.ok else 1)
