"""``nexus-store serve`` (run the sync server) and ``nexus-store token`` (issue a signed token)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app


def _parse_tokens(pairs: list[str]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for pair in pairs:
        for item in pair.split():
            token, sep, tenant = item.partition("=")
            if not sep or not token or not tenant:
                raise typer.BadParameter(f"expected TOKEN=TENANT, got {item.split('=')[0][:4]}...")
            tokens[token] = tenant
    return tokens


@app.command("serve")
def serve(  # noqa: PLR0917 - typer reads each option from a parameter
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    database: Annotated[
        str,
        typer.Option(
            help="Storage: sqlite:///relative.db, sqlite:////absolute.db, postgresql://... "
            "or memory://. Several servers may share one PostgreSQL database.",
            envvar="NEXUS_STORE_DATABASE",
        ),
    ] = "sqlite:///nexus-server.db",
    token: Annotated[
        list[str] | None,
        typer.Option(
            help="A development token, TOKEN=TENANT (repeatable; the environment variable "
            "takes space-separated pairs, which keeps tokens out of the process list).",
            envvar="NEXUS_STORE_TOKENS",
            show_default=False,
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            help="Secret for signed tokens (see `nexus-store token`); prefer the "
            "environment variable.",
            envvar="NEXUS_STORE_SECRET",
            show_default=False,
        ),
    ] = None,
    max_body: Annotated[str, typer.Option(help="Largest request body (413 beyond).")] = "16MiB",
    max_batch: Annotated[int, typer.Option(help="Most ops per push (413 beyond).")] = 1000,
    max_pull: Annotated[int, typer.Option(help="Most changes per pull.")] = 5000,
    rate: Annotated[
        str | None,
        typer.Option(
            help="Per-tenant request rate, e.g. 20/s or 600/min (429 beyond).", show_default=False
        ),
    ] = None,
    burst: Annotated[
        int | None,
        typer.Option(help="Requests a tenant may make at once (default: one second's worth)."),
    ] = None,
    events_interval: Annotated[
        float, typer.Option(help="Seconds between checks for news for event-stream listeners.")
    ] = 1.0,
    conflict_policy: Annotated[
        str,
        typer.Option(
            help="How a write based on an old version is resolved: lww (last writer wins "
            "by hybrid logical clock), server_wins, or module:function naming a resolver "
            "(called with the op and the server's copy; returns the data to keep, or None "
            "to keep the server's copy).",
        ),
    ] = "lww",
    max_clock_offset: Annotated[
        float,
        typer.Option(
            help="Seconds a write's clock stamp may be ahead of the server's clock; a write "
            "stamped further ahead is applied with the server's time (so a device whose "
            "clock runs fast cannot win every conflict), and clients whose clock is off by "
            "more are told so and stamp with the server's time.",
        ),
    ] = 300.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run the sync server (push, pull, events, health, /openapi.json) under uvicorn."""
    try:
        from ..server._limits import Limits, parse_rate, parse_size  # noqa: PLC0415
        from ..server._run import ServeOptions, run  # noqa: PLC0415
    except ImportError as exc:
        typer.echo(
            f"the server needs its extra: pip install 'nexus-store[server]' ({exc})", err=True
        )
        raise typer.Exit(2) from exc
    try:
        limits = Limits(
            max_body_bytes=parse_size(max_body),
            max_batch_ops=max_batch,
            max_pull_limit=max_pull,
            rate=parse_rate(rate) if rate else None,
            burst=burst,
        )
        options = ServeOptions(
            database=database,
            host=host,
            port=port,
            tokens=_parse_tokens(token or []),
            secret=secret,
            limits=limits,
            events_interval=events_interval,
            log_level=log_level.lower(),
            access_log=access_log,
            conflict_policy=conflict_policy,
            max_clock_offset=max_clock_offset,
        )
        run(options)
    except (ValueError, OSError) as exc:
        typer.echo(f"nexus-store serve: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("token")
def token(
    tenant: Annotated[str, typer.Option(help="The tenant the token acts for.")],
    secret: Annotated[
        str,
        typer.Option(
            help="The server's signing secret.", envvar="NEXUS_STORE_SECRET", show_default=False
        ),
    ],
    ttl: Annotated[float, typer.Option(help="Seconds the token stays valid.")] = 3600.0,
) -> None:
    """Print a signed bearer token for a tenant (for servers run with --secret)."""
    from ..server._auth import SignedTokenVerifier  # noqa: PLC0415

    try:
        typer.echo(SignedTokenVerifier(secret).issue(tenant, ttl=ttl))
    except ValueError as exc:
        typer.echo(f"nexus-store token: {exc}", err=True)
        raise typer.Exit(2) from exc
