"""``nexus-store bench``: run the benchmarks (:mod:`nexus_store.bench`)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app
from ._errors import fail


@app.command("bench")
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Short runs (seconds, not minutes).")
    ] = False,
    only: Annotated[
        str, typer.Option("--only", help="Comma-separated: store,queue,http,drain,worker.")
    ] = "store,queue,http,drain,worker",
) -> None:
    """Run the benchmarks (each prints ratios against a baseline measured in the same run)."""
    # Loaded here: keeps `nexus-store --help` fast.
    from ..bench import BENCHMARKS, missing_packages, run_benchmarks  # noqa: PLC0415

    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        fail("bench", f"unknown benchmark(s) {unknown}: choose from {', '.join(BENCHMARKS)}")
    missing = missing_packages(names)
    if missing:
        needs = "; ".join(f"{name} needs {', '.join(p)}" for name, p in missing.items())
        fail("bench", f'{needs}: pip install "nexus-store[bench]"')
    raise typer.Exit(run_benchmarks(names, quick=quick))
