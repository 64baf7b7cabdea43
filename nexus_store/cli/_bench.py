"""``nexus-store bench``: run the benchmarks of a source checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command("bench")
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Short runs (seconds, not minutes).")
    ] = False,
    only: Annotated[
        str, typer.Option("--only", help="Comma-separated: store,queue,http,drain,worker.")
    ] = "store,queue,http,drain,worker",
    root: Annotated[
        Path, typer.Option("--root", help="The source checkout that holds benchmarks/.")
    ] = Path(),
) -> None:
    """Run the benchmarks in benchmarks/ (each prints ratios against an in-run baseline)."""
    runner = root / "benchmarks" / "run.py"
    if not runner.is_file():
        typer.echo(
            f"no benchmarks/run.py under {root.resolve()}: run this from a source checkout "
            "of nexus-store, or pass --root",
            err=True,
        )
        raise typer.Exit(2)
    command = [sys.executable, str(runner), "--only", only, *(["--quick"] if quick else [])]
    # The command is this interpreter running the checkout's own runner script.
    raise typer.Exit(subprocess.call(command))  # noqa: S603
