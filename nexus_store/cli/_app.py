"""The Typer application that every ``nexus-store`` subcommand registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="nexus-store",
    help="nexus-store: an offline-first data store with background sync.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """nexus-store: an offline-first data store with background sync."""
