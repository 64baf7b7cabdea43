"""Run the sync server under uvicorn, programmatically (the CLI and tests use this).

:func:`run` opens the storage a URL names, builds the app and serves it until SIGINT or
SIGTERM. The listening socket is bound before uvicorn starts, so ``port=0`` picks a free
port, and the address is announced on stdout as one line::

    nexus-store serve: listening on http://127.0.0.1:54321

which is how :class:`~nexus_store.testing.ServerProcess` learns the port without a race
(``https://`` when serving TLS with ``tls_cert``/``tls_key``). Listening beyond loopback
without TLS logs a warning: bearer tokens and data would cross the network in clear.
On shutdown, open event streams are ended at once (instead of waiting out uvicorn's
graceful timeout) and the storage is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp

from .._gc import set_gc_pause
from .._http_api import is_loopback_host
from ._auth import ChainVerifier, SignedTokenVerifier, StaticTokenVerifier, TokenVerifier
from ._clock_bound import DEFAULT_MAX_CLOCK_OFFSET, check_max_offset
from ._limits import Limits

if TYPE_CHECKING:
    from ._limits_postgres import PostgresRateLimiter
    from ._rules import ConflictPolicy
    from .blobs import BlobLimits, BlobService

__all__ = [
    "ANNOUNCE_PREFIX",
    "ServeOptions",
    "announce",
    "bind_socket",
    "check_tls_files",
    "load_conflict_policy",
    "make_verifier",
    "open_blobs",
    "plain_http_warning",
    "run",
    "run_loop",
    "serve_app",
    "shared_rate_limiter",
    "uvicorn_config",
]

ANNOUNCE_PREFIX = "nexus-store serve: listening on "
_GRACEFUL_SHUTDOWN_SECONDS = 5
_KEEP_ALIVE_SECONDS = 20
"""How long an idle connection stays open: longer than clients keep one for reuse
(httpx, under HttpBackend, drops it after 5 s), so a client never sends a request on a
connection the server is closing (uvicorn's own 5 s crossed it, and the client got a reset)."""


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``nexus-store serve`` can be told.

    Attributes:
        database: storage URL: ``sqlite:///file.db``, ``postgresql://...`` or ``memory://``.
        host: the address to listen on (loopback by default).
        port: the port (0: any free port, announced on stdout).
        tokens: development tokens, ``{token: tenant}``.
        secret: the shared secret of HS256 JWTs (and of the deprecated ``nxs1.`` tokens).
        jwks_url: the identity provider's JWKS URL, for RS256/ES256 JWTs.
        jwt_audience: the ``aud`` JWTs must carry.
        jwt_issuer: the ``iss`` JWTs must carry.
        tenant_claim: the JWT claim that names the tenant.
        limits: body, batch, pull and rate limits.
        events_interval: seconds between head checks for tenants with event listeners.
        log_level: uvicorn's and the server's log level.
        access_log: log every request (uvicorn's access log; tokens are never logged).
        conflict_policy: ``"lww"`` (default), ``"server_wins"``, or ``"module:function"``
            naming an importable :data:`~nexus_store.server.Resolver`.
        tls_cert: the server's certificate chain (PEM): serve HTTPS (with ``tls_key``).
        tls_key: the certificate's private key (PEM).
        max_clock_offset: seconds an op's clock stamp may be ahead of the server's clock
            before the op is re-stamped with the server's time (also the bound beyond
            which clients are told their clock is off).
        blobs: where files are kept (``file:///folder``, ``s3://bucket?endpoint_url=...``,
            ``memory://``); ``None``: beside an SQLite database, in memory for
            ``memory://``, no file endpoints for PostgreSQL; ``"none"``: no file endpoints.
        blob_limits: the largest blob, the tenant quota, the largest chunk.
    """

    database: str = "sqlite:///nexus-server.db"
    host: str = "127.0.0.1"
    port: int = 8765
    tokens: Mapping[str, str] = field(default_factory=dict)
    secret: str | None = None
    jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    tenant_claim: str = "sub"
    limits: Limits = field(default_factory=Limits)
    events_interval: float = 1.0
    log_level: str = "warning"
    access_log: bool = False
    conflict_policy: str = "lww"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_clock_offset: float = DEFAULT_MAX_CLOCK_OFFSET
    blobs: str | None = None
    blob_limits: BlobLimits | None = None

    def __post_init__(self) -> None:
        check_max_offset(self.max_clock_offset)


def check_tls_files(cert: Path | None, key: Path | None) -> bool:
    """Check that a certificate and its key load (before anything is bound or announced).

    Returns:
        Whether TLS is configured.

    Raises:
        ValueError: only one of the two given, a missing or unreadable file, or a key that
            does not match the certificate.
    """
    if cert is None and key is None:
        return False
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ValueError(f"TLS: no such file: {exc.filename}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS: cannot load {cert} with {key}: {exc}") from exc
    return True


def load_conflict_policy(name: str) -> ConflictPolicy:
    """The policy ``name`` stands for: ``"lww"``, ``"server_wins"`` or a resolver.

    A resolver is named ``"package.module:function"`` and imported here, so the server
    refuses to start (rather than fail on the first conflict) when it cannot be found.

    Raises:
        ValueError: an unknown name, a module that cannot be imported, or a name that is
            not a callable in it.
    """
    if name in ("lww", "server_wins"):
        return name  # type: ignore[return-value]
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute.isidentifier():
        raise ValueError(f"conflict policy is lww, server_wins or module:function, not {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"conflict resolver {name!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    resolver = getattr(module, attribute, None)
    if not callable(resolver):
        # ValueError, not TypeError: it is a bad option value, reported as such.
        raise ValueError(  # noqa: TRY004
            f"conflict resolver {name!r}: {module_name} has no function {attribute!r}"
        )
    return resolver  # type: ignore[no-any-return]


def make_verifier(
    tokens: Mapping[str, str],
    secret: str | None,
    *,
    jwks_url: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    tenant_claim: str = "sub",
) -> TokenVerifier:
    """The verifier for static tokens, JWTs, or both (static tokens asked first).

    A ``secret`` verifies HS256 JWTs and, for clients that still hold them, the
    deprecated ``nxs1.`` tokens; a ``jwks_url`` verifies RS256/ES256 JWTs.

    Raises:
        ValueError: no credentials at all (the server would refuse everyone), or a bad
            token, secret or JWKS URL.
    """
    verifiers: list[TokenVerifier] = []
    if tokens:
        verifiers.append(StaticTokenVerifier(tokens))
    if secret or jwks_url:
        from ._jwt import JwtVerifier  # noqa: PLC0415 - PyJWT loads only where it is used

        verifiers.append(
            JwtVerifier(
                secret=secret or None,
                jwks_url=jwks_url,
                audience=audience,
                issuer=issuer,
                tenant_claim=tenant_claim,
            )
        )
    if secret:
        verifiers.append(SignedTokenVerifier(secret))  # deprecated alias, see _auth
    if not verifiers:
        raise ValueError(
            "no credentials configured: give --token TOKEN=TENANT, --secret or --jwks-url"
        )
    return verifiers[0] if len(verifiers) == 1 else ChainVerifier(verifiers)


def _closer(*closes: Callable[[], None]) -> Callable[[], None]:
    """One callable calling each of ``closes`` (the streams to end at a stop signal)."""

    def close() -> None:
        for each in closes:
            each()

    return close


def uvicorn_config(
    app: ASGIApp,
    *,
    log_level: str = "warning",
    access_log: bool = False,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> uvicorn.Config:
    """The uvicorn settings the server runs under (benchmarks reuse them for baselines)."""
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=_KEEP_ALIVE_SECONDS,
        server_header=False,
        proxy_headers=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and without it small responses wait ~40 ms for delayed ACKs (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, also ending event streams as soon as a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._on_exit is not None and self._loop is not None:
            # Runs in a signal handler: hand the work to the loop.
            self._loop.call_soon_threadsafe(self._on_exit)


async def serve_app(
    app: ASGIApp,
    sock: socket.socket,
    *,
    log_level: str = "warning",
    access_log: bool = False,
    on_exit: Callable[[], None] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Serve ``app`` on an already bound socket until SIGINT/SIGTERM.

    Args:
        app: the ASGI app.
        sock: from :func:`bind_socket`.
        log_level: uvicorn's log level.
        access_log: log every request.
        on_exit: called on the loop as soon as a stop signal arrives.
        tls_cert: serve HTTPS with this certificate chain (and ``tls_key``).
        tls_key: the certificate's private key.
    """
    config = uvicorn_config(
        app, log_level=log_level, access_log=access_log, tls_cert=tls_cert, tls_key=tls_key
    )
    server = _Server(config, on_exit)
    await server.serve(sockets=[sock])


def announce(sock: socket.socket, *, tls: bool = False) -> None:
    """Print the listening address line (see the module docstring) and flush."""
    sys.stdout.write(f"{ANNOUNCE_PREFIX}{_url_of(sock, 'https' if tls else 'http')}\n")
    sys.stdout.flush()


def plain_http_warning(host: str, *, tls: bool) -> str | None:
    """The warning for listening beyond loopback without TLS (``None``: nothing to say)."""
    if tls or is_loopback_host(host):
        return None
    return (
        f"listening on {host} without TLS: bearer tokens and data cross the network in "
        "clear. Pass --tls-cert and --tls-key, or put a TLS-terminating proxy in front "
        "and listen on 127.0.0.1."
    )


async def _serve(
    options: ServeOptions, verifier: TokenVerifier, policy: ConflictPolicy, sock: socket.socket
) -> None:
    from ._app import create_app  # noqa: PLC0415 - keeps `import nexus_store.server._run` light
    from ._core import open_core  # noqa: PLC0415

    core = await open_core(
        options.database,
        conflict_policy=policy,
        max_batch=options.limits.max_batch_ops,
        max_pull=options.limits.max_pull_limit,
        max_clock_offset=options.max_clock_offset,
    )
    limiter = None
    try:
        limiter = await shared_rate_limiter(options.database, options.limits)
        blobs = await open_blobs(options)
        app = create_app(
            core,
            verifier=verifier,
            limits=options.limits,
            events_interval=options.events_interval,
            close_core=True,
            rate_limiter=limiter,
            operator_token=(operator_token := secrets.token_urlsafe(16)),
            blobs=blobs,
        )
        tls = options.tls_cert is not None
        announce(sock, tls=tls)
        # Whoever has this URL sees every tenant's counts: printed for the operator only.
        base = _url_of(sock, "https" if tls else "http")
        sys.stdout.write(
            f"nexus-store serve: operator page {base}/operator?token={operator_token}\n"
        )
        sys.stdout.flush()
        await serve_app(
            app,
            sock,
            log_level=options.log_level,
            access_log=options.access_log,
            on_exit=_closer(app.state.notifier.close, app.state.operator_stats.close),
            tls_cert=options.tls_cert,
            tls_key=options.tls_key,
        )
    finally:
        if limiter is not None:
            await limiter.aclose()
        await core.aclose()  # idempotent: the app's shutdown usually closed it already


async def open_blobs(options: ServeOptions) -> BlobService | None:
    """The blob service ``options`` ask for, opened (``None``: no file endpoints)."""
    from .blobs import BlobLimits, BlobService, default_blob_url, open_blob_storage  # noqa: PLC0415

    url = options.blobs if options.blobs is not None else default_blob_url(options.database)
    if url is None or url == "none":
        return None
    limits = options.blob_limits or BlobLimits(max_chunk_bytes=options.limits.max_body_bytes)
    service = BlobService(open_blob_storage(url), limits=limits)
    await service.open()
    return service


async def shared_rate_limiter(database: str, limits: Limits) -> PostgresRateLimiter | None:
    """The rate limiter all server processes on ``database`` share (PostgreSQL only).

    Returns:
        A connected :class:`PostgresRateLimiter` when there is a rate limit and the
        storage is PostgreSQL; ``None`` otherwise (the app then limits in process).
    """
    scheme = database.partition("://")[0].lower()
    if limits.rate is None or scheme not in ("postgresql", "postgres"):
        return None
    from ._limits_postgres import PostgresRateLimiter  # noqa: PLC0415 - psycopg is optional

    limiter = PostgresRateLimiter(database, limits.rate, limits.effective_burst)
    await limiter.open()
    return limiter


def run(options: ServeOptions) -> None:
    """Serve until SIGINT or SIGTERM (blocking).

    Raises:
        ValueError: no credentials configured, or a bad option.
        OSError: the address cannot be bound.
    """
    verifier = make_verifier(
        options.tokens,
        options.secret,
        jwks_url=options.jwks_url,
        audience=options.jwt_audience,
        issuer=options.jwt_issuer,
        tenant_claim=options.tenant_claim,
    )
    policy = load_conflict_policy(options.conflict_policy)
    tls = check_tls_files(options.tls_cert, options.tls_key)
    logging.basicConfig(
        level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    set_gc_pause(True)  # the server owns its process: bulk reads may pause the collector
    warning = plain_http_warning(options.host, tls=tls)
    if warning is not None:
        sys.stderr.write(f"nexus-store serve: warning: {warning}\n")
        sys.stderr.flush()
    sock = bind_socket(options.host, options.port)
    run_loop(_serve(options, verifier, policy, sock))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on the event loop uvicorn would pick (uvloop if installed, else asyncio)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):  # an optional speed-up, as uvicorn's "auto" loop
        loop_factory = importlib.import_module("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)
