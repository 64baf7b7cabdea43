"""``nexus-store check``: is a store file sound? SQLite's integrity check plus the store's rules.

Exit codes: 0 the file is sound (warnings may be printed), 1 it is damaged or inconsistent
(every finding is listed), 2 bad input (no such file, a directory).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._check import CheckReport, Severity, check_file
from ._app import app
from ._options import DbOption


def _findings_table(report: CheckReport) -> Table:
    shown = len(report.findings)
    more = f", first {shown} shown" if report.total_findings > shown else ""
    table = Table(title=f"findings ({report.total_findings}{more})")
    for column in ("severity", "where", "what"):
        table.add_column(column)
    for finding in report.findings:
        colour = "red" if finding.severity is Severity.ERROR else "yellow"
        table.add_row(
            f"[{colour}]{finding.severity.value}[/]", escape(finding.where), escape(finding.what)
        )
    return table


@app.command("check")
def check(
    db: DbOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Check a store file: SQLite's integrity check and the store's own invariants."""
    err = Console(stderr=True)
    try:
        report = check_file(db)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        raise typer.Exit(0 if report.ok else 1)
    console = Console()
    console.print(f"[bold]{escape(report.path)}[/]")
    integrity = "ok" if report.integrity == ["ok"] else f"{len(report.integrity)} problem(s)"
    console.print(f"SQLite integrity check: {escape(integrity)}")
    if report.collections:
        listed = ", ".join(f"{name} ({count} items)" for name, count in report.collections.items())
        console.print(f"collections: {escape(listed)}")
    console.print(
        f"sync queue: {report.ops} ops ({report.dead} dead); "
        f"quarantined changes: {report.quarantined}"
    )
    if report.findings:
        console.print(_findings_table(report))
    if report.ok:
        console.print("[green]the file is sound[/]")
        raise typer.Exit(0)
    console.print(f"[red]the file is damaged or inconsistent: {len(report.errors)} error(s)[/]")
    raise typer.Exit(1)
