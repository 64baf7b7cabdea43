"""``nexus-store serve`` (run the sync server) and ``nexus-store token`` (mint a JWT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app
from ._errors import fail


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
    port: Annotated[
        int, typer.Option(help="Port to listen on (0: any free port).", envvar="NEXUS_STORE_PORT")
    ] = 8765,
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
            help="Shared secret of HS256 JWTs (see `nexus-store token`; also accepts the "
            "deprecated nxs1. tokens); prefer the environment variable.",
            envvar="NEXUS_STORE_SECRET",
            show_default=False,
        ),
    ] = None,
    jwks_url: Annotated[
        str | None,
        typer.Option(
            help="Your identity provider's JWKS URL: RS256/ES256 JWTs verified against it.",
            envvar="NEXUS_STORE_JWKS_URL",
            show_default=False,
        ),
    ] = None,
    jwt_audience: Annotated[
        str | None, typer.Option(help="The audience (aud) JWTs must carry.", show_default=False)
    ] = None,
    jwt_issuer: Annotated[
        str | None, typer.Option(help="The issuer (iss) JWTs must carry.", show_default=False)
    ] = None,
    tenant_claim: Annotated[str, typer.Option(help="The JWT claim naming the tenant.")] = "sub",
    max_body: Annotated[str, typer.Option(help="Largest request body (413 beyond).")] = "16MiB",
    max_batch: Annotated[int, typer.Option(help="Most ops per push (413 beyond).")] = 1000,
    max_pull: Annotated[int, typer.Option(help="Most changes per pull.")] = 5000,
    rate: Annotated[
        str | None,
        typer.Option(
            help="Per-tenant request rate, e.g. 20/s or 600/min (429 beyond). With PostgreSQL "
            "storage the limit holds across every server process on the database (the "
            "buckets are kept there); with SQLite or memory storage it is per process.",
            show_default=False,
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
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Serve HTTPS with this certificate chain (PEM; with --tls-key)."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="The certificate's private key (PEM).")
    ] = None,
    blobs: Annotated[
        str | None,
        typer.Option(
            help="Where uploaded files are kept: a folder (file:///path), "
            "s3://bucket/prefix?endpoint_url=... (needs nexus-store[s3]; several servers may "
            "share it), memory://, or none. Default: beside an SQLite database "
            "(<file>-blobs), in memory for memory://, none for PostgreSQL.",
            envvar="NEXUS_STORE_BLOBS",
            show_default=False,
        ),
    ] = None,
    max_blob: Annotated[str, typer.Option(help="Largest file (413 beyond).")] = "10GiB",
    blob_quota: Annotated[
        str | None,
        typer.Option(help="Most bytes of files per tenant (413 beyond).", show_default=False),
    ] = None,
) -> None:
    """Run the sync server (push, pull, events, health, /openapi.json) under uvicorn."""
    try:
        from ..server._limits import Limits, parse_rate, parse_size  # noqa: PLC0415
        from ..server._run import ServeOptions, run  # noqa: PLC0415
        from ..server.blobs import BlobLimits  # noqa: PLC0415
    except ImportError as exc:
        fail("serve", f"the server needs its extra: pip install 'nexus-store[server]' ({exc})")
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
            jwks_url=jwks_url,
            jwt_audience=jwt_audience,
            jwt_issuer=jwt_issuer,
            tenant_claim=tenant_claim,
            limits=limits,
            events_interval=events_interval,
            log_level=log_level.lower(),
            access_log=access_log,
            conflict_policy=conflict_policy,
            tls_cert=tls_cert,
            tls_key=tls_key,
            max_clock_offset=max_clock_offset,
            blobs=blobs,
            blob_limits=BlobLimits(
                max_blob_bytes=parse_size(max_blob),
                tenant_quota_bytes=parse_size(blob_quota) if blob_quota else None,
                max_chunk_bytes=limits.max_body_bytes,
            ),
        )
        run(options)
    except (ValueError, OSError) as exc:
        fail("serve", str(exc))


@app.command("token")
def token(  # noqa: PLR0917 - typer reads each option from a parameter
    tenant: Annotated[str, typer.Option(help="The tenant the token acts for.")],
    secret: Annotated[
        str,
        typer.Option(
            help="The server's --secret (at least 16 bytes).",
            envvar="NEXUS_STORE_SECRET",
            show_default=False,
        ),
    ],
    ttl: Annotated[float, typer.Option(help="Seconds the token stays valid.")] = 3600.0,
    audience: Annotated[
        str | None, typer.Option(help="The aud claim (if the server checks one).")
    ] = None,
    issuer: Annotated[
        str | None, typer.Option(help="The iss claim (if the server checks one).")
    ] = None,
    tenant_claim: Annotated[str, typer.Option(help="The claim naming the tenant.")] = "sub",
) -> None:
    """Print an HS256 JWT for a tenant, for development (servers run with --secret).

    In production, tokens come from your identity provider (`serve --jwks-url`).
    """
    try:
        from ..server._jwt import issue_jwt  # noqa: PLC0415
    except ImportError as exc:
        fail("token", f"tokens need the server extra: pip install 'nexus-store[server]' ({exc})")
    try:
        typer.echo(
            issue_jwt(
                secret,
                tenant,
                ttl=ttl,
                tenant_claim=tenant_claim,
                audience=audience,
                issuer=issuer,
            )
        )
    except ValueError as exc:
        fail("token", str(exc))
