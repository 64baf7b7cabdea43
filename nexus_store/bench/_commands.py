"""The three subcommands, from options to exit code: ``local``, ``sync`` and ``server``.

Each measures, prints a table of figures with their targets, says what limited a sync
run, and then, as asked: compares with an earlier run (``--compare``), keeps everything
in a JSON file (``--json``), draws charts (``--plot``). A target not met is always
flagged ("NOT met", and a closing line counting them); with ``--check`` it also makes
the exit code 1. Bad input raises :class:`~._plan.BenchInputError` before any load is
sent; a run that breaks raises :class:`~._loadrun.BenchRunError`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ._baseline import baseline_figures, wire_baselines
from ._figures import Figure, missed
from ._loadrun import BenchRunError, Snapshot, new_collection, process_count, run_load
from ._local import local_figures, run_local
from ._machine import now_iso
from ._plan import BenchInputError, LoadConfig, check_config, needs_consent, plan
from ._plot import check_plotting, plot_runs
from ._preflight import check_remote
from ._report import document, figures_table, print_compare, read_figures, write_json
from ._servers import LocalServers
from ._syncresult import SyncTargets, sync_figures
from ._verify import ItemCounter, count_by_pull

__all__ = ["Outputs", "console", "local_command", "server_command", "sync_command"]


def console() -> Console:
    """The console figures are printed on: a terminal's width, or 120 columns in a file."""
    out = Console()
    return out if out.is_terminal else Console(width=120)


@dataclass(frozen=True)
class Outputs:
    """Where results go besides the terminal."""

    json: Path | None = None
    plot: Path | None = None
    compare: Path | None = None
    check: bool = False

    def precheck(self, *, plots: bool) -> None:
        """Refuse, before measuring, what would fail afterwards.

        Raises:
            BenchInputError: matplotlib missing for ``--plot``, an unreadable ``--compare``.
        """
        if self.plot is not None:
            if not plots:
                raise BenchInputError("--plot draws sync runs: use it with sync or server")
            check_plotting()
        if self.compare is not None:
            read_figures(self.compare)


def _finish(
    out: Console,
    subcommand: str,
    title: str,
    figures: Sequence[Figure],
    results: Any,
    *,
    config: dict[str, Any],
    outputs: Outputs,
    started_at: str,
    disk: Path | None = None,
    runs: Sequence[dict[str, Any]] = (),
    targets: SyncTargets | None = None,
    sweep: _Sweep | None = None,
) -> int:
    out.print(figures_table(figures, title))
    stopped = sweep.stopped if sweep is not None else None
    if stopped is not None:
        out.print(f"[bold red]{stopped}[/]: the figures above are of the runs before it")
    for run in runs:
        lines = run["limits"]
        out.print(f"[bold]What limited the run of {run['clients']} clients:[/] {lines[0]}")
        for line in lines[1:]:
            out.print(f"  also: {line}")
    if outputs.compare is not None:
        print_compare(out, outputs.compare, figures)
    if outputs.json is not None:
        # Without --db, every file of a run (stores, a started server's database) goes
        # into the system's temporary folder: that is the disk the figures depend on.
        where = disk if disk is not None else Path(tempfile.gettempdir())
        doc = document(
            subcommand, figures, results, config=config, started_at=started_at, disk=where
        )
        write_json(outputs.json, doc)
        out.print(f"figures kept in {outputs.json}")
    if outputs.plot is not None and runs:
        p99 = targets.max_push_p99_ms if targets is not None else 500.0
        paths = plot_runs(runs, outputs.plot, label=title, p99_target=p99)
        out.print(f"charts drawn: {', '.join(str(p) for p in paths)}")
    if sweep is not None and sweep.interrupted:
        return 130
    failed = missed(figures)
    if stopped is not None:
        return 1
    if failed:
        names = ", ".join(f"{f.group}: {f.label}" for f in failed)
        out.print(f"[bold red]{len(failed)} target(s) NOT met:[/] {names}")
        if not outputs.check:
            out.print("(--check makes a missed target exit with code 1)")
        return 1 if outputs.check else 0
    if any(f.target is not None for f in figures):
        out.print("[green]every target met[/]")
    return 0


def local_command(db: Path | None, *, quick: bool, outputs: Outputs, out: Console) -> int:
    """``nexus-store bench local``."""
    outputs.precheck(plots=False)
    started = now_iso()
    err = Console(stderr=True)
    where = db.parent if db is not None else None
    err.print(
        "nexus-store bench local: writes and removes a few MB of files "
        f"in {'a temporary folder' if where is None else where}"
    )
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("starting", total=None)
        results = run_local(db, quick=quick, step=lambda name: bar.update(task, description=name))
    figures = local_figures(results)
    return _finish(
        out,
        "local",
        "nexus-store bench local" + (" (quick)" if quick else ""),
        figures,
        results,
        config={"db": None if db is None else str(db), "quick": quick},
        outputs=outputs,
        started_at=started,
        disk=db if db is not None else None,
    )


def _announce(config: LoadConfig, counts: Sequence[int], err: Console, yes: bool) -> None:
    for n in counts:
        step = config.with_clients(n)
        load = plan(step)
        err.print(
            f"about to send: {load.describe(step)} "
            f"({process_count(step)} client processes, {step.client_durability} durability)"
        )
        if not load.loopback:
            err.print(
                "  each run writes its items into a new collection (bench_...) of the token's "
                "tenant on the server, and leaves them there: use a tenant of its own"
            )
        if needs_consent(load, step) and not yes:
            raise BenchInputError(
                f"this run sends more than a default amount to {', '.join(load.hosts)}, "
                "which is not this machine: pass --yes to go ahead"
            )


@dataclass
class _Sweep:
    """The runs of a sweep, and why it stopped early (``None``: it did not)."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    stopped: str | None = None
    interrupted: bool = False


def _sweep(
    config: LoadConfig,
    counts: Sequence[int],
    token: str | None,
    targets: SyncTargets,
    *,
    counter: ItemCounter | None,
    server_pids: Sequence[int],
    err: Console,
    prepare: Callable[[], None] | None = None,
    database_pid: int | None = None,
) -> _Sweep:
    """Each client count's run in turn; one that stops ends the sweep, keeping those done
    (with none done, its error goes up as it came)."""
    done = _Sweep()
    for n in counts:
        try:
            run = _one_run(config, n, token, counter, server_pids, err, prepare, database_pid)
        except (BenchRunError, KeyboardInterrupt) as exc:
            if not done.runs:
                raise
            done.interrupted = isinstance(exc, KeyboardInterrupt)
            reason = "interrupted" if done.interrupted else str(exc)
            done.stopped = f"the run of {n} clients stopped: {reason}"
            return done
        done.runs.append(run)
        done.figures += sync_figures(run, targets, key=f"sync.c{n}", group=f"sync, {n} clients")
    return done


def _one_run(
    config: LoadConfig,
    n: int,
    token: str | None,
    counter: ItemCounter | None,
    server_pids: Sequence[int],
    err: Console,
    prepare: Callable[[], None] | None,
    database_pid: int | None,
) -> dict[str, Any]:
    """One run of ``n`` clients, with its progress bar."""
    step = config.with_clients(n)
    check_config(step)
    if prepare is not None:
        prepare()
    total = step.warmup + step.duration
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(f"{n} clients", total=total, info="starting")
        last = [0.0, 0]

        def show(
            s: Snapshot,
            task: Any = task,
            bar: Progress = bar,
            last: Any = last,
            total: float = total,
        ) -> None:
            rate = 0.0
            if s.t > last[0]:
                rate = (s.acked - last[1]) / (s.t - last[0])
            last[0], last[1] = s.t, s.acked
            info = (
                f"{s.phase}: {s.acked:,} acked, {rate:,.0f} ops/s, {s.errors:,} errors, "
                f"{s.live:,} queued"
            )
            if s.phase == "drain":
                info += f", {s.drained}/{s.clients} drained"
            bar.update(task, completed=min(max(s.t, 0.0), total), info=info)

        return run_load(
            step,
            token,
            collection=new_collection(),
            counter=counter,
            server_pids=server_pids,
            database_pid=database_pid,
            progress=show,
        )


def _config_json(config: LoadConfig, counts: Sequence[int], targets: SyncTargets) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["clients"] = list(counts)
    data["targets"] = dataclasses.asdict(targets)
    return data


def sync_command(
    config: LoadConfig,
    counts: Sequence[int],
    token: str | None,
    targets: SyncTargets,
    *,
    outputs: Outputs,
    yes: bool,
    verify: bool,
    server_pids: Sequence[int],
    out: Console,
) -> int:
    """``nexus-store bench sync``: load against servers someone else runs."""
    check_config(config)
    outputs.precheck(plots=True)
    err = Console(stderr=True)
    started = now_iso()
    _announce(config, counts, err, yes)  # before anything is sent
    probe = new_collection()
    infos = [
        check_remote(
            url,
            token,
            batch=config.batch,
            collection=probe,
            timeout=min(config.timeout, 10.0),
            allow_insecure_http=config.allow_insecure_http,
        )
        for url in config.urls
    ]
    counter = None
    if verify:
        counter = count_by_pull(
            config.urls[0],
            token,
            page=infos[0].max_pull_limit,
            allow_insecure_http=config.allow_insecure_http,
        )
    sweep = _sweep(
        config, counts, token, targets, counter=counter, server_pids=server_pids, err=err
    )
    servers = ", ".join(f"{i.url} (nexus-store {i.version})" for i in infos)
    return _finish(
        out,
        "sync",
        f"nexus-store bench sync against {servers}",
        sweep.figures,
        {
            "servers": [dataclasses.asdict(i) for i in infos],
            "runs": sweep.runs,
            "stopped": sweep.stopped,
        },
        config=_config_json(config, counts, targets),
        outputs=outputs,
        started_at=started,
        runs=sweep.runs,
        targets=targets,
        sweep=sweep,
    )


def server_command(
    database: str,
    servers: int | None,
    config: LoadConfig,
    counts: Sequence[int],
    targets: SyncTargets,
    *,
    outputs: Outputs,
    baseline: bool,
    quick: bool,
    out: Console,
) -> int:
    """``nexus-store bench server``: start servers here and load them."""
    outputs.precheck(plots=True)
    err = Console(stderr=True)
    started = now_iso()
    with LocalServers(database, servers=servers, max_batch=config.batch) as local:
        config = dataclasses.replace(config, urls=tuple(local.urls))
        check_config(config)
        err.print(f"started {local.label} on {', '.join(local.urls)}")
        _announce(config, counts, err, yes=True)
        figures: list[Figure] = []
        wire: dict[str, Any] | None = None
        if baseline:
            err.print("measuring the server alone, the bare pipeline and the floor...")
            wire = wire_baselines(
                local,
                batch=config.batch,
                ops=2_000 if quick else 20_000,
                connections=max(1, min(8, max(counts))),
                rounds=1 if quick else 3,
            )
            figures += baseline_figures(wire, local.label)
        counter = local.counter()
        sweep = _sweep(
            config,
            counts,
            local.token,
            targets,
            counter=counter,
            server_pids=local.pids,
            database_pid=local.database_pid,
            err=err,
            prepare=counter.mark,
        )
        figures += sweep.figures
        label = local.label
    config_json = _config_json(config, counts, targets)
    config_json.update({"database": database, "servers": len(config.urls), "baseline": baseline})
    return _finish(
        out,
        "server",
        f"nexus-store bench server: {label}",
        figures,
        {"storage": label, "wire": wire, "runs": sweep.runs, "stopped": sweep.stopped},
        config=config_json,
        outputs=outputs,
        started_at=started,
        runs=sweep.runs,
        targets=targets,
        sweep=sweep,
    )
