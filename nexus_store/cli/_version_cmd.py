"""``nexus-store version``."""

from __future__ import annotations

import typer

from .._version import __version__
from ._app import app


@app.command("version")
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
