"""Options several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DbOption", "RemoteOption", "TokenOption"]

DbOption = Annotated[Path, typer.Option("--db", help="The store's database file.")]
RemoteOption = Annotated[str, typer.Option(help="The sync server's base URL.")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        help="Bearer token (prefer the environment variable: it keeps the token out of "
        "the process list).",
        envvar="NEXUS_STORE_TOKEN",
        show_default=False,
    ),
]
