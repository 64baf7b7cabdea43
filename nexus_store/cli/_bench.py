"""``nexus-store bench``: benchmarks users run (:mod:`nexus_store.bench`).

- ``bench local``: the store and the queue on this disk, beside raw sqlite3;
- ``bench sync --remote URL``: simulated clients against a server you run;
- ``bench server``: a server started here (SQLite or PostgreSQL), loaded the same way,
  beside the bare pipeline and the floor;
- ``bench`` alone (``--quick``, ``--only``): the developer suite, each benchmark against a
  baseline measured in the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ._app import app
from ._errors import fail
from ._options import TokenOption

bench_app = typer.Typer(
    help="Benchmarks: local (this disk), sync (a server you run), server (one started here).",
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(bench_app, name="bench")

JsonOption = Annotated[
    Path | None,
    typer.Option("--json", help="Keep every figure, the versions and the machine in FILE."),
]
PlotOption = Annotated[
    Path | None,
    typer.Option("--plot", help="Draw PNG charts into DIR (needs the [bench] extra)."),
]
CompareOption = Annotated[
    Path | None,
    typer.Option("--compare", help="Print the change against an earlier --json FILE."),
]
CheckOption = Annotated[
    bool, typer.Option("--check", help="Exit with code 1 when a target is not met.")
]
QuickOption = Annotated[bool, typer.Option("--quick", help="A short run (seconds).")]
ClientsOption = Annotated[
    str | None,
    typer.Option(
        "--clients",
        help="Simulated clients, each with its own store file; 10,50,200 runs one after "
        "another (default 10; --quick 4).",
        show_default=False,
    ),
]
OpsOption = Annotated[
    int | None,
    typer.Option(
        "--ops",
        help="Ops each client writes at most (default: until --duration).",
        show_default=False,
    ),
]
BatchOption = Annotated[
    int | None,
    typer.Option("--batch", help="Ops per save and per push (default 100).", show_default=False),
]
PayloadOption = Annotated[
    int | None,
    typer.Option(
        "--payload-bytes", help="Bytes of each op's item (default 200).", show_default=False
    ),
]
DurationOption = Annotated[
    float | None,
    typer.Option(
        "--duration", help="Seconds of measured load (default 10; --quick 3).", show_default=False
    ),
]
RateOption = Annotated[
    float | None,
    typer.Option(
        "--rate",
        help="Open loop: ops per second offered by all clients together. Without it, a "
        "closed loop: each client pushes again as soon as it is answered.",
        show_default=False,
    ),
]
MixOption = Annotated[
    str | None,
    typer.Option(
        "--mix",
        help="Weights of push:pull:poke actions, e.g. 8:1:1 (default 1:0:0).",
        show_default=False,
    ),
]
WarmupOption = Annotated[
    float | None,
    typer.Option(
        "--warmup",
        help="Seconds of load first that are not counted (default 2).",
        show_default=False,
    ),
]
ProcessesOption = Annotated[
    int | None,
    typer.Option(
        "--processes", help="Client processes (default: one per CPU).", show_default=False
    ),
]
DurabilityOption = Annotated[
    str | None,
    typer.Option(
        "--client-durability",
        help="The simulated clients' stores: normal (default: no disk sync per commit) or full.",
        show_default=False,
    ),
]
StandardOption = Annotated[
    bool,
    typer.Option(
        "--standard",
        help="The published run: 200 clients, one batch of 100 ops per second each, 5 "
        "minutes; target >= 2,000 ops/s applied.",
    ),
]
TargetOpsOption = Annotated[
    float | None,
    typer.Option("--target-ops", help="Target: applied ops/s at least this.", show_default=False),
]
TargetP99Option = Annotated[
    float | None,
    typer.Option(
        "--target-p99-ms",
        help="Target: push latency p99 below this (default 500).",
        show_default=False,
    ),
]
TargetErrorsOption = Annotated[
    float | None,
    typer.Option(
        "--target-error-pct",
        help="Target: failed requests below this % (default 0.1).",
        show_default=False,
    ),
]


def _durability(value: str | None) -> Literal["normal", "full"] | None:
    if value is None:
        return None
    if value not in ("normal", "full"):
        fail("bench", f"--client-durability is normal or full, not {value!r}")
    return "full" if value == "full" else "normal"


def _run(command: str, call: object) -> None:
    """Run a bench call; its typed failures become one line and an exit code."""
    from ..bench import BenchInputError, BenchRunError  # noqa: PLC0415 - loaded on use

    assert callable(call)
    try:
        code = call()
    except BenchInputError as exc:
        fail(command, str(exc))
    except BenchRunError as exc:
        fail(command, str(exc), code=1)
    raise typer.Exit(code)


@bench_app.callback()
def bench(
    ctx: typer.Context,
    quick: QuickOption = False,
    only: Annotated[
        str,
        typer.Option(
            "--only",
            help="Suite: comma-separated store,queue,http,drain,worker,files,store_sync,catchup.",
        ),
    ] = "store,queue,http,drain,worker,files,store_sync,catchup",
) -> None:
    """Run benchmarks: local, sync, server; alone, the developer suite.

    Alone (with --quick, --only), each benchmark of the developer suite prints ratios
    against a baseline measured in the same run.
    """
    if ctx.invoked_subcommand is not None:
        return
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


@bench_app.command("local")
def local(
    db: Annotated[
        Path | None,
        typer.Option(
            "--db", help="A path on the disk to measure (files go beside it, and are removed)."
        ),
    ] = None,
    quick: QuickOption = False,
    json_file: JsonOption = None,
    compare: CompareOption = None,
    check: CheckOption = False,
) -> None:
    """The store and the queue on this disk, beside raw sqlite3 doing the same work.

    Saves per second at each durability, save_many, lease+ack, and the disk's synced
    commit latency.
    """
    from ..bench import Outputs, console, local_command  # noqa: PLC0415

    outputs = Outputs(json=json_file, compare=compare, check=check)
    _run("bench local", lambda: local_command(db, quick=quick, outputs=outputs, out=console()))


@bench_app.command("sync")
def sync(  # noqa: PLR0917 - typer reads each option from a parameter
    remote: Annotated[
        list[str] | None,
        typer.Option(
            "--remote",
            help="The server's base URL (repeat for several servers: "
            "clients are spread over them).",
            show_default=False,
        ),
    ] = None,
    token: TokenOption = None,
    clients: ClientsOption = None,
    ops: OpsOption = None,
    batch: BatchOption = None,
    payload_bytes: PayloadOption = None,
    duration: DurationOption = None,
    rate: RateOption = None,
    mix: MixOption = None,
    warmup: WarmupOption = None,
    processes: ProcessesOption = None,
    client_durability: DurabilityOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds for each request.")] = 30.0,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", help="Send more than a default amount to a host that is not this machine."
        ),
    ] = False,
    verify: Annotated[
        bool, typer.Option(help="Count the run's items on the server afterwards (a pull).")
    ] = True,
    server_pid: Annotated[
        list[int] | None,
        typer.Option(
            "--server-pid",
            help="A server process on this machine to watch (RSS, CPU); repeatable.",
            show_default=False,
        ),
    ] = None,
    allow_insecure_http: Annotated[
        bool, typer.Option(help="Send the token over plain http to a non-loopback host.")
    ] = False,
    quick: QuickOption = False,
    standard: StandardOption = False,
    target_ops: TargetOpsOption = None,
    target_p99_ms: TargetP99Option = None,
    target_error_pct: TargetErrorsOption = None,
    json_file: JsonOption = None,
    plot: PlotOption = None,
    compare: CompareOption = None,
    check: CheckOption = False,
) -> None:
    """Load a sync server you run with simulated clients, each with its own store file.

    Applied ops/s, push/pull latency, errors by kind, time to drain, the latency of a
    CRITICAL save under load, and what limited the run; afterwards the run's items are
    counted on the server (nothing lost, nothing applied twice).
    """
    from ..bench import LoadOptions, Outputs, console, sync_command  # noqa: PLC0415

    def call() -> int:
        options = LoadOptions(
            clients=clients,
            ops=ops,
            batch=batch,
            payload_bytes=payload_bytes,
            duration=duration,
            rate=rate,
            mix=mix,
            warmup=warmup,
            processes=processes,
            timeout=timeout,
            client_durability=_durability(client_durability),
            allow_insecure_http=allow_insecure_http,
            target_ops=target_ops,
            target_p99_ms=target_p99_ms,
            target_error_pct=target_error_pct,
            quick=quick,
            standard=standard,
        )
        config, counts, targets = options.resolve(tuple(remote or ()))
        outputs = Outputs(json=json_file, plot=plot, compare=compare, check=check)
        return sync_command(
            config,
            counts,
            token,
            targets,
            outputs=outputs,
            yes=yes,
            verify=verify,
            server_pids=server_pid or [],
            out=console(),
        )

    _run("bench sync", call)


@bench_app.command("server")
def server(  # noqa: PLR0917 - typer reads each option from a parameter
    database: Annotated[
        str,
        typer.Option(
            help="sqlite, postgres (a PostgreSQL from the pgserver package), "
            "sqlite:///FILE, or postgresql://URL of a server you run."
        ),
    ] = "sqlite",
    servers: Annotated[
        int | None,
        typer.Option(
            "--servers",
            help="Server processes (default 1 on SQLite, 2 on PostgreSQL).",
            show_default=False,
        ),
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="Also measure the server alone, the bare pipeline and the floor.")
    ] = True,
    clients: ClientsOption = None,
    ops: OpsOption = None,
    batch: BatchOption = None,
    payload_bytes: PayloadOption = None,
    duration: DurationOption = None,
    rate: RateOption = None,
    mix: MixOption = None,
    warmup: WarmupOption = None,
    processes: ProcessesOption = None,
    client_durability: DurabilityOption = None,
    quick: QuickOption = False,
    standard: StandardOption = False,
    target_ops: TargetOpsOption = None,
    target_p99_ms: TargetP99Option = None,
    target_error_pct: TargetErrorsOption = None,
    json_file: JsonOption = None,
    plot: PlotOption = None,
    compare: CompareOption = None,
    check: CheckOption = False,
) -> None:
    """Start a sync server here (SQLite or PostgreSQL) and load it as `bench sync` does.

    Beside the load: the server alone, the bare pipeline and the floor; the server's RSS
    and CPU.
    """
    from ..bench import LoadOptions, Outputs, console, server_command  # noqa: PLC0415

    def call() -> int:
        options = LoadOptions(
            clients=clients,
            ops=ops,
            batch=batch,
            payload_bytes=payload_bytes,
            duration=duration,
            rate=rate,
            mix=mix,
            warmup=warmup,
            processes=processes,
            client_durability=_durability(client_durability),
            target_ops=target_ops,
            target_p99_ms=target_p99_ms,
            target_error_pct=target_error_pct,
            quick=quick,
            standard=standard,
        )
        config, counts, targets = options.resolve(("http://127.0.0.1",))
        outputs = Outputs(json=json_file, plot=plot, compare=compare, check=check)
        return server_command(
            database,
            servers,
            config,
            counts,
            targets,
            outputs=outputs,
            baseline=baseline,
            quick=quick,
            out=console(),
        )

    _run("bench server", call)
