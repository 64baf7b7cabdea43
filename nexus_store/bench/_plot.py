"""``--plot DIR``: PNG charts of sync runs (matplotlib, from the ``[bench]`` extra).

- ``throughput.png``: ops applied per second over the run, one line per client count,
  the warm-up shaded and the end of the load marked;
- ``latency_cdf.png``: the distribution of push latency (log scale), one line per client
  count, the p99 target marked;
- ``drain.png``: ops still queued in the clients, by priority, over the largest run: how
  a backlog drains (``CRITICAL`` and ``HIGH`` first).

Charts are drawn on :class:`matplotlib.figure.Figure` objects (no global pyplot state, no
display needed).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._plan import BenchInputError

__all__ = ["PLOTS", "check_plotting", "plot_runs"]

PLOTS = ("throughput.png", "latency_cdf.png", "drain.png")
_PRIORITY_COLOURS = {
    "CRITICAL": "#d62728",
    "HIGH": "#ff7f0e",
    "NORMAL": "#1f77b4",
    "LOW": "#7f7f7f",
}


def check_plotting() -> None:
    """Refuse ``--plot`` before a run when matplotlib is missing.

    Raises:
        BenchInputError: matplotlib cannot be imported.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise BenchInputError('--plot needs matplotlib: pip install "nexus-store[bench]"')


def _figure(width: float = 8.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure  # noqa: PLC0415 - optional, loaded on use

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _throughput(runs: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    figure = _figure()
    ax = figure.subplots()
    for run in runs:
        points = run["series"]["throughput"]
        if not points:
            continue
        # Each count is the acks of one whole second: a step over that second.
        edges = [p[0] for p in points] + [points[-1][0] + 1]
        ax.stairs([p[1] for p in points], edges, label=f"{run['clients']} clients")
    first = runs[0]
    warmup = float(first["warmup_s"])
    end = warmup + float(first["duration_s"])
    if warmup > 0:
        ax.axvspan(0, warmup, color="0.9", label="warm-up (not counted)")
    ax.axvline(end, color="0.4", linestyle="--", linewidth=1, label="end of load")
    offered = first.get("offered_ops_s")
    if offered and len(runs) == 1:
        ax.axhline(offered, color="0.6", linestyle=":", linewidth=1, label="offered")
    ax.set_xlabel("seconds since the start")
    ax.set_ylabel("ops applied per second")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    figure.savefig(path)


def _latency(runs: Sequence[dict[str, Any]], path: Path, title: str, p99_target: float) -> None:
    figure = _figure()
    ax = figure.subplots()
    for run in runs:
        points = run["series"]["push_cdf"]
        if not points:
            continue
        ax.step(
            [p[0] for p in points],
            [p[1] for p in points],
            where="post",
            label=f"{run['clients']} clients (p99 {run['push_ms']['p99']:.0f} ms)",
        )
    ax.axvline(
        p99_target,
        color="#d62728",
        linestyle="--",
        linewidth=1,
        label=f"p99 target {p99_target:g} ms",
    )
    ax.axhline(0.99, color="0.6", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("push latency (ms, log scale)")
    ax.set_ylabel("fraction of pushes at or below")
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize="small")
    figure.savefig(path)


def _drain(run: dict[str, Any], path: Path, title: str) -> None:
    figure = _figure()
    ax = figure.subplots()
    points = run["series"]["pending"]
    seconds = [p[0] for p in points]
    for name, colour in _PRIORITY_COLOURS.items():
        values = [p[1].get(name, 0) for p in points]
        if any(values):
            ax.plot(seconds, values, label=name, color=colour)
    end = float(run["warmup_s"]) + float(run["duration_s"])
    ax.axvline(end, color="0.4", linestyle="--", linewidth=1, label="end of load")
    ax.set_xlabel("seconds since the start")
    ax.set_ylabel("ops queued in the clients")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{title}: {run['clients']} clients")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    figure.savefig(path)


def plot_runs(
    runs: Sequence[dict[str, Any]], folder: Path, *, label: str, p99_target: float = 500.0
) -> list[Path]:
    """Draw the charts of the sync runs into ``folder``; return the files written."""
    check_plotting()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in PLOTS]
    _throughput(runs, paths[0], f"Throughput over time: {label}")
    _latency(runs, paths[1], f"Push latency: {label}", p99_target)
    largest = max(runs, key=lambda r: int(r["clients"]))
    _drain(largest, paths[2], f"Queued ops by priority: {label}")
    return paths
