"""The sync server's ASGI app (Starlette): push, pull, events, health, OpenAPI.

:func:`create_app` wires a server core to HTTP. Every endpoint but ``/health`` and
``/openapi.json`` needs ``Authorization: Bearer <token>``; the verifier maps the token to
a tenant and that tenant alone is passed to the core (a body never names a tenant).

Every answer carries the server's clock and its bound on clock offsets (headers
``Nexus-Clock`` and ``Nexus-Clock-Bound``, from the core's ``clock`` and
``max_clock_offset``; see :mod:`._clock_bound`).

Request handling, in order: body size (413, :class:`~._limits.BodyLimitMiddleware`,
before anything else reads the body), authentication (401), the tenant's rate limit (429
with ``Retry-After``), decoding and validation (400/415), the batch size (413), then the
core. Storage failures the core reports as retryable become 503 with ``Retry-After``.

A push answers one :class:`~nexus_store.backends.PushResult` entry per op, in order. An
op that does not validate (or whose data nests deeper than 64 levels) but carries a
usable ``op_id`` is answered ``rejected`` with the reason while the rest of the batch is
applied (one bad op never blocks the others); a body that is not a batch at all is
refused whole (400). The ``Idempotency-Key`` header is informational: the op ids are the
idempotency keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import _codec
from .._clock import Clock
from .._exceptions import (
    AuthError,
    CodecError,
    LifecycleError,
    NexusStoreError,
    PayloadTooLargeError,
    PermanentError,
    RetryableError,
)
from .._gc import collector_paused
from .._http_api import (
    EVENTS_PATH,
    HEALTH_PATH,
    JSON,
    MSGPACK,
    MSGPACK_ALIASES,
    OPENAPI_PATH,
    PULL_PATH,
    PUSH_PATH,
    SKIP_WRITER_PARAM,
    WRITER_HEADER,
    Health,
    LimitsInfo,
    media_type_of,
)
from .._remote import Changes, PushResult, RemoteOp
from .._version import __version__
from ._auth import TokenVerifier, bearer_token
from ._clock_bound import ClockHeaders
from ._events import ChangeNotifier, EventStreamResponse
from ._limits import BodyLimitMiddleware, Limits, RateLimit, RateLimiter, retry_after_header
from ._openapi import openapi_schema
from ._operator import OperatorStats, operator_paths, operator_routes
from ._prepare import PreparedOp, item_id_of, prepare, prepare_wire_batch, refused
from ._rules import Answer, Page, change_fields

if TYPE_CHECKING:
    from .blobs import BlobService

__all__ = ["CoreLike", "create_app"]

_log = logging.getLogger("nexus_store.server")
BodyFormat = Literal["msgpack", "json"]
_MAX_COLLECTIONS = 100


class CoreLike(Protocol):
    """What the app needs from a server core (:class:`~nexus_store.server._core.ServerCore`)."""

    @property
    def clock(self) -> Clock:
        """The server's clock (stated in every answer)."""
        ...

    @property
    def max_clock_offset(self) -> float:
        """Seconds an op's stamp may be ahead of :attr:`clock` (stated in every answer)."""
        ...

    async def apply(
        self, tenant: str, ops: Sequence[PreparedOp], *, writer: int | None = None
    ) -> list[Answer]:
        """Apply a batch of prepared ops for ``tenant``; one plain answer per op, in order."""
        ...

    async def page(
        self,
        tenant: str,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
        skip_writer: int | None = None,
    ) -> Page:
        """Stored changes of ``tenant`` after ``cursor`` (without ``skip_writer``'s)."""
        ...

    async def head(self, tenant: str) -> int:
        """The tenant's latest change sequence."""
        ...

    async def aclose(self) -> None:
        """Release the storage."""
        ...


class _HttpError(Exception):
    """An error answer: status, a short code, a message, extra headers."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


async def _render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _HttpError)
    return JSONResponse(
        {"error": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers
    )


def _core_error(exc: NexusStoreError) -> _HttpError:
    """Map an error the core raised to an HTTP answer."""
    if isinstance(exc, RetryableError):
        wait = retry_after_header(exc.retry_after or 1.0)
        return _HttpError(503, "unavailable", str(exc), {"retry-after": wait})
    if isinstance(exc, PayloadTooLargeError):
        return _HttpError(413, "batch_too_large", str(exc))
    if isinstance(exc, PermanentError):
        return _HttpError(400, "rejected", str(exc))
    if isinstance(exc, LifecycleError):  # the core is closing: the server is shutting down
        return _HttpError(503, "unavailable", "the server is shutting down", {"retry-after": "1"})
    if isinstance(exc, AuthError):
        return _HttpError(403, "forbidden", str(exc))
    _log.error("server core failed", exc_info=exc)
    return _HttpError(500, "internal", "the server failed to handle the request")


def _render_results(answers: list[Answer], fmt: BodyFormat) -> Response:
    # Answers hold no None fields (each defaults to None on the wire), so msgpack takes
    # them as they are, in one call; JSON goes through the model for its conversions.
    if fmt == "msgpack":
        return Response(_codec.encode({"results": answers}), media_type=MSGPACK)
    result = PushResult.model_validate({"results": answers})
    return Response(result.model_dump_json(exclude_none=True), media_type=JSON)


def _render_page(page: Page, fmt: BodyFormat) -> Response:
    if fmt == "msgpack":
        return Response(_encode_page(page), media_type=MSGPACK)
    changes = Changes.model_validate(
        {
            "changes": [change_fields(item) for item in page.items],
            "cursor": page.cursor,
            "has_more": page.has_more,
        }
    )
    return Response(changes.model_dump_json(exclude_none=True), media_type=JSON)


def _encoded_keys(*names: str) -> tuple[bytes, ...]:
    return tuple(_codec.encode(name) for name in names)


_K_COLLECTION, _K_ITEM_ID, _K_VERSION, _K_DELETED, _K_DATA, _K_HLC = _encoded_keys(
    "collection", "item_id", "version", "deleted", "data", "hlc"
)
_K_CHANGES, _K_CURSOR, _K_HAS_MORE = _encoded_keys("changes", "cursor", "has_more")
_MAP3, _MAP5, _MAP6, _TRUE, _FALSE = b"\x83", b"\x85", b"\x86", b"\xc3", b"\xc2"
# What follows the version, by (deleted, has data): the deleted flag and the data key.
_AFTER_VERSION = {
    (False, True): _K_DELETED + _FALSE + _K_DATA,
    (True, True): _K_DELETED + _TRUE + _K_DATA,
    (False, False): _K_DELETED + _FALSE,
    (True, False): _K_DELETED + _TRUE,
}


def _encode_page(page: Page) -> bytes:
    """A page as msgpack :class:`Changes`, each item's stored data spliced in as it is.

    The wire bytes are put together from pieces: the keys are encoded once, each value
    by one call, and the page is joined once; the fields come in the model's order (a
    client can then keep a decoded change as it is). The same value as encoding
    :func:`~._rules.change_fields` of each item, but about half the CPU per change.
    """
    pack = _codec.scalar_encoder()
    prefixes: dict[str, bytes] = {}  # per collection: its key and value, the item id key
    after = _AFTER_VERSION
    parts: list[bytes] = [_MAP3, _K_CHANGES, _codec.encode_array_header(len(page.items))]
    extend = parts.extend
    for item in page.items:
        collection = item.collection
        prefix = prefixes.get(collection)
        if prefix is None:
            prefix = prefixes[collection] = _K_COLLECTION + pack(collection) + _K_ITEM_ID
        key = item.item_key
        data = item.data
        extend(
            (
                _MAP5 if data is None else _MAP6,
                prefix,
                # item_id_of's common case inline: a string key without escapes
                pack(
                    key[1:-1]
                    if len(key) >= 2 and key[0] == '"' == key[-1] and "\\" not in key
                    else item_id_of(key)
                ),
                _K_VERSION,
                pack(item.version),
                after[item.deleted, data is not None],
            )
        )
        if data is None:
            extend((_K_HLC, pack(item.hlc)))
        else:
            extend((data, _K_HLC, pack(item.hlc)))
    extend((_K_CURSOR, pack(page.cursor), _K_HAS_MORE, _TRUE if page.has_more else _FALSE))
    return b"".join(parts)


def _accepts_msgpack(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(
        part.split(";", 1)[0].strip().lower() in MSGPACK_ALIASES for part in accept.split(",")
    )


def _decode_body(body: bytes, fmt: BodyFormat) -> Any:
    try:
        if fmt == "msgpack":
            return _codec.decode(body)
        return json.loads(body)
    except (CodecError, ValueError, RecursionError) as exc:
        raise _HttpError(400, "malformed_body", f"the body is not valid {fmt}") from exc


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "op"
        parts.append(f"{where}: {error['msg']}")
    return "invalid op: " + "; ".join(parts)


def _read_batch(content: bytes, fmt: BodyFormat, max_ops: int) -> list[PreparedOp]:
    """The prepared ops of a push body (decoded, sized, validated: see :func:`_parse_ops`).

    The collector is paused meanwhile (a batch is thousands of new containers, none of
    them garbage).

    Raises:
        _HttpError: a body that does not decode (400), a batch over ``max_ops`` (413), or
            one :func:`_parse_ops` refuses.
    """
    with collector_paused():
        body = _decode_body(content, fmt)
        if (
            isinstance(body, dict)
            and isinstance(body.get("ops"), list)
            and len(body["ops"]) > max_ops
        ):
            raise _HttpError(413, "batch_too_large", f"a batch may hold at most {max_ops} ops")
        return _parse_ops(body, fmt)


def _parse_ops(body: Any, fmt: BodyFormat) -> list[PreparedOp]:
    """Validate and prepare a push body's ops, in order.

    An op of exactly the wire types is prepared straight from its fields (msgpack only:
    see :func:`prepare_wire_batch`); any other goes through :class:`RemoteOp` validation,
    and one that fails it is answered ``rejected`` with the model's reasons.

    Raises:
        _HttpError: the body is not a batch, or an invalid op has no usable op id.
    """
    if type(body) is not dict or len(body) != 1 or type(raw_ops := body.get("ops")) is not list:
        raise _HttpError(400, "invalid_batch", 'the body must be {"ops": [...]}')
    if fmt != "msgpack":
        return [_validated(raw, position) for position, raw in enumerate(raw_ops)]
    prepared = prepare_wire_batch(raw_ops)
    for position, op in enumerate(prepared):
        if op is None:
            prepared[position] = _validated(raw_ops[position], position)
    return prepared  # type: ignore[return-value] # every None was replaced


def _validated(raw: Any, position: int) -> PreparedOp:
    try:
        return prepare(RemoteOp.model_validate(raw))
    except ValidationError as exc:
        op_id = raw.get("op_id") if isinstance(raw, dict) else None
        if not isinstance(op_id, str) or not 1 <= len(op_id) <= 64:
            raise _HttpError(
                400, "invalid_batch", f"op {position} is invalid and has no usable op_id"
            ) from exc
        return refused(op_id, _short_errors(exc))


def _int_param(request: Request, name: str, default: int, *, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18 or int(raw) < minimum:
        raise _HttpError(400, "bad_parameter", f"{name} must be an integer >= {minimum}")
    return int(raw)


def _writer(raw: str | None, name: str) -> int | None:
    """A writer id (a positive 63-bit integer) from a header or query parameter."""
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 0 < int(raw) < 2**63:
        raise _HttpError(400, "bad_parameter", f"{name} must be an integer in [1, 2**63)")
    return int(raw)


def _collections_param(request: Request) -> list[str] | None:
    names = request.query_params.getlist("collections")
    if not names:
        return None
    if len(names) > _MAX_COLLECTIONS or any(not 1 <= len(n) <= 63 for n in names):
        raise _HttpError(400, "bad_parameter", "collections: 1 to 100 names of 1 to 63 characters")
    return names


class _Endpoints:
    """The request handlers, sharing one core, verifier, limits and notifier."""

    def __init__(
        self,
        core: CoreLike,
        *,
        verifier: TokenVerifier,
        limits: Limits,
        notifier: ChangeNotifier,
        rate_limiter: RateLimit | None,
        events_keepalive: float,
    ) -> None:
        self.core = core
        self.verifier = verifier
        self.limits = limits
        self.notifier = notifier
        self.rate_limiter = rate_limiter
        self.events_keepalive = events_keepalive
        self.health = Health(
            status="ok",
            version=__version__,
            limits=LimitsInfo(
                max_body_bytes=limits.max_body_bytes,
                max_batch_ops=limits.max_batch_ops,
                max_pull_limit=limits.max_pull_limit,
            ),
        ).model_dump_json()
        self.stats = OperatorStats()
        schema = openapi_schema()
        paths, components = operator_paths()
        schema.setdefault("paths", {}).update(paths)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        self.schema = json.dumps(schema)

    async def authorize(self, request: Request) -> str:
        """The request's tenant, after the rate limit (401 and 429 otherwise)."""
        token = bearer_token(request.headers.get("authorization"))
        tenant = await self.verifier.verify(token) if token is not None else None
        if tenant is None:
            raise _HttpError(
                401,
                "unauthorized",
                "a valid bearer token is required",
                {"www-authenticate": 'Bearer realm="nexus-store"'},
            )
        if self.rate_limiter is not None:
            wait = await self.rate_limiter.acquire(tenant)
            if wait > 0:
                self.stats.limited(tenant)
                raise _HttpError(
                    429,
                    "rate_limited",
                    "too many requests for this tenant",
                    {"retry-after": retry_after_header(wait)},
                )
        return tenant

    async def push(self, request: Request) -> Response:
        """``POST /v1/push``."""
        tenant = await self.authorize(request)
        fmt = media_type_of(request.headers.get("content-type"))
        if fmt is None:
            raise _HttpError(
                415, "unsupported_media_type", "send application/msgpack or application/json"
            )
        ops = _read_batch(await request.body(), fmt, self.limits.max_batch_ops)
        writer = _writer(request.headers.get(WRITER_HEADER), WRITER_HEADER)
        try:
            answers = await self.core.apply(tenant, ops, writer=writer) if ops else []
        except NexusStoreError as exc:
            raise _core_error(exc) from exc
        if len(answers) != len(ops):
            _log.error("server core answered %d results for %d ops", len(answers), len(ops))
            raise _HttpError(500, "internal", "the server failed to handle the request")
        accepted = sum(1 for answer in answers if answer["status"] == "accepted")
        self.stats.pushed(tenant, accepted, sum(a["status"] == "rejected" for a in answers))
        with collector_paused():
            response = _render_results(answers, fmt)
        if accepted:
            # Listeners hear of the change once the pusher has its answer: reading the
            # new head for them does not delay it.
            response.background = BackgroundTask(self._poke, tenant)
        return response

    async def _poke(self, tenant: str) -> None:
        self.notifier.poke(tenant)

    async def pull(self, request: Request) -> Response:
        """``GET /v1/pull``."""
        tenant = await self.authorize(request)
        cursor = _int_param(request, "cursor", 0, minimum=0)
        limit = min(_int_param(request, "limit", 500, minimum=1), self.limits.max_pull_limit)
        collections = _collections_param(request)
        skip = _writer(request.query_params.get(SKIP_WRITER_PARAM), SKIP_WRITER_PARAM)
        try:
            page = await self.core.page(
                tenant, cursor, limit, collections=collections, skip_writer=skip
            )
        except NexusStoreError as exc:
            raise _core_error(exc) from exc
        self.stats.pulled(tenant)
        with collector_paused():  # a page may hold thousands of changes
            return _render_page(page, "msgpack" if _accepts_msgpack(request) else "json")

    async def events(self, request: Request) -> Response:
        """``GET /v1/events``."""
        tenant = await self.authorize(request)
        return EventStreamResponse(self.notifier, tenant, keepalive=self.events_keepalive)

    async def health_check(self, request: Request) -> Response:
        """``GET /health``."""
        return Response(self.health, media_type=JSON)

    async def openapi(self, request: Request) -> Response:
        """``GET /openapi.json``."""
        return Response(self.schema, media_type=JSON)


def create_app(
    core: CoreLike,
    *,
    verifier: TokenVerifier,
    limits: Limits | None = None,
    events_interval: float = 1.0,
    events_keepalive: float = 15.0,
    close_core: bool = False,
    rate_limiter: RateLimit | None = None,
    operator_token: str | None = None,
    blobs: BlobService | None = None,
) -> Starlette:
    """Build the sync server's ASGI app around a server core.

    Args:
        core: the server core (applies pushes, answers pulls).
        verifier: maps bearer tokens to tenants.
        limits: body, batch, pull and rate limits (defaults: :class:`Limits`).
        events_interval: seconds between head checks for tenants with event listeners.
        events_keepalive: seconds of silence before an event stream sends a keep-alive.
        close_core: close ``core`` when the app shuts down (the app owns it).
        rate_limiter: the per-tenant limiter to use (default: one built from ``limits``;
            pass one to inject a clock).
        operator_token: serve the operator page (``/operator?token=...``, see
            :mod:`._operator`) to whoever has this token; ``None``: no operator page.
        blobs: serve files (tus uploads under ``/v1/files``, reads under ``/v1/blobs``;
            see :mod:`nexus_store.server.blobs`); ``None``: no file endpoints.

    Returns:
        The Starlette app; ``app.state.notifier`` is its
        :class:`~nexus_store.server._events.ChangeNotifier` (call its ``close()`` to end
        event streams early at shutdown).
    """
    limits = limits or Limits()
    if rate_limiter is None and limits.rate is not None:
        rate_limiter = RateLimiter(limits.rate, limits.effective_burst)
    notifier = ChangeNotifier(core.head, interval=events_interval)
    api = _Endpoints(
        core,
        verifier=verifier,
        limits=limits,
        notifier=notifier,
        rate_limiter=rate_limiter,
        events_keepalive=events_keepalive,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with notifier.running():
                yield
        finally:
            if close_core:
                await core.aclose()
            if blobs is not None:
                await blobs.aclose()

    app = Starlette(
        routes=[
            Route(PUSH_PATH, api.push, methods=["POST"]),
            Route(PULL_PATH, api.pull, methods=["GET"]),
            Route(EVENTS_PATH, api.events, methods=["GET"]),
            Route(HEALTH_PATH, api.health_check, methods=["GET"]),
            Route(OPENAPI_PATH, api.openapi, methods=["GET"]),
            *operator_routes(api.stats, operator_token),
            *_blob_routes(blobs, api.authorize),
        ],
        middleware=[
            Middleware(ClockHeaders, clock=core.clock, max_offset=core.max_clock_offset),
            Middleware(BodyLimitMiddleware, max_body_bytes=limits.max_body_bytes),
        ],
        exception_handlers={_HttpError: _render_error},
        lifespan=lifespan,
    )
    app.state.notifier = notifier
    app.state.limits = limits
    app.state.operator_stats = api.stats
    return app


def _blob_routes(blobs: BlobService | None, authorize: Any) -> list[Route]:
    if blobs is None:
        return []
    from .blobs._routes import blob_routes  # noqa: PLC0415

    return blob_routes(blobs, authorize)
