"""What a benchmark shows and keeps: rich tables, the ``--json`` file, ``--compare``.

:func:`figures_table` prints figures with their targets ("met" / "NOT met");
:func:`document` builds the JSON kept by ``--json FILE`` (every figure, the raw results,
the versions, the machine, the command line); :func:`read_figures` reads such a file back
for ``--compare`` and :func:`compare_table` prints the change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ._figures import Change, Figure, compare, figure_from_json, missed
from ._machine import command_line, machine, now_iso, versions
from ._plan import BenchInputError

__all__ = [
    "compare_table",
    "document",
    "figures_table",
    "format_value",
    "read_figures",
    "write_json",
]

FORMAT_VERSION = 1


def format_value(value: float | None, unit: str) -> str:
    """A value for people: thousands separated, a few significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("ops/s", "items/s", "changes/s", "") and abs(value) >= 100:
        text = f"{value:,.0f}"
    elif unit == "x":
        text = f"{value:.2f}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit not in ("", "x") else (text + unit)


def figures_table(figures: Sequence[Figure], title: str) -> Table:
    """The figures as a table: one row each, grouped, targets marked met / NOT met."""
    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("", justify="left")
    table.add_column("note", overflow="fold", max_width=48)
    group = None
    for figure in figures:
        if figure.group != group:
            if group is not None:
                table.add_section()
            group = figure.group
            table.add_row(f"[bold]{group}[/]", "", "", "", "")
        verdict = ""
        if figure.met is True:
            verdict = "[green]met[/]"
        elif figure.met is False:
            verdict = "[bold red]NOT met[/]"
        table.add_row(
            f"  {figure.label}",
            format_value(figure.value, figure.unit),
            "" if figure.target is None else str(figure.target),
            verdict,
            figure.note,
        )
    return table


def compare_table(changes: Sequence[Change], old_name: str) -> Table:
    """An earlier run's figures beside this run's, with the change."""
    table = Table(title=f"change against {old_name}", title_justify="left", pad_edge=False)
    for name, justify in (("figure", "left"), ("before", "right"), ("now", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("change", justify="right")
    table.add_column("")
    colours = {"better": "green", "worse": "red", "same": "dim"}
    for change in changes:
        f = change.figure
        ratio = "-" if change.ratio is None else f"{(change.ratio - 1) * 100:+.1f}%"
        colour = colours.get(change.verdict)
        verdict = f"[{colour}]{change.verdict}[/]" if colour else ""
        table.add_row(
            f"{f.group}: {f.label}",
            format_value(change.old, f.unit),
            format_value(change.new, f.unit),
            ratio,
            verdict,
        )
    return table


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, tuples lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def document(
    subcommand: str,
    figures: Sequence[Figure],
    results: Any,
    *,
    config: dict[str, Any],
    started_at: str,
    disk: Path | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything a ``--json`` file keeps (see the module docstring)."""
    doc: dict[str, Any] = _clean(
        {
            "tool": "nexus-store bench",
            "format": FORMAT_VERSION,
            "subcommand": subcommand,
            "command_line": command_line(argv),
            "started_at": started_at,
            "finished_at": now_iso(),
            "versions": versions(),
            "machine": machine(disk),
            "config": config,
            "figures": [f.to_json() for f in figures],
            "targets_missed": [f.key for f in missed(figures)],
            "results": results,
        }
    )
    return doc


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def read_figures(path: Path) -> list[Figure]:
    """The figures of an earlier ``--json`` file.

    Raises:
        BenchInputError: the file cannot be read or is not one.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BenchInputError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("tool") != "nexus-store bench":
        raise BenchInputError(f"{path} is not a file written by nexus-store bench --json")
    try:
        return [figure_from_json(f) for f in doc.get("figures", [])]
    except ValueError as exc:
        raise BenchInputError(f"{path}: {exc}") from exc


def print_compare(console: Console, path: Path, figures: Sequence[Figure]) -> None:
    """Print the change against the run kept in ``path``."""
    changes = compare(read_figures(path), figures)
    if changes:
        console.print(compare_table(changes, path.name))
    else:
        console.print(f"{path.name} has none of this run's figures to compare")
