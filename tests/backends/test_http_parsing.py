"""HttpBackend's edge: every bad answer becomes a typed error and nothing is acked.

These tests answer through ``httpx.MockTransport`` (a real httpx transport) so each
malformed, truncated, oversized or wrongly typed response can be produced on demand.
"""

from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store import (
    AuthError,
    LifecycleError,
    NetworkError,
    PayloadTooLargeError,
    PermanentError,
    ProtocolError,
    RateLimitedError,
    ServerUnavailableError,
)
from nexus_store.backends import (
    Change,
    Changes,
    HttpBackend,
    OpResult,
    OpStatus,
    PushResult,
    RemoteOp,
)
from nexus_store.backends._event_stream import EventStreamDecoder
from nexus_store.backends._http_wire import (
    _validate,
    changes_of,
    check_changes,
    check_push_result,
    clock_reading,
    error_for_status,
    idempotency_key,
    parse_retry_after,
    push_result_of,
)

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], httpx.Response]


def op(n: int, item: str = "i") -> RemoteOp:
    return RemoteOp(
        op_id=f"op-{n}",
        collection="notes",
        item_id=f"{item}{n}",
        kind="upsert",
        data={"id": f"{item}{n}", "text": "x" * 10},
        hlc=f"{1_700_000_000_000 + n:013d}-00000-node",
    )


def accepted(ops: list[RemoteOp]) -> dict[str, object]:
    return {
        "results": [
            {"op_id": o.op_id, "status": "accepted", "version": i + 1} for i, o in enumerate(ops)
        ]
    }


def packed(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        content=msgpack.packb(body),
        headers={"content-type": "application/msgpack", **(headers or {})},
    )


def backend(handler: Handler, **kwargs: object) -> HttpBackend:
    return HttpBackend(
        "http://sync.test",
        token="t0k3n",
        transport=httpx.MockTransport(handler),
        **kwargs,  # type: ignore[arg-type]
    )


# -- pure parts ------------------------------------------------------------------------


def test_retry_after_seconds_and_dates() -> None:
    """Retry-After is read as delta-seconds or an HTTP date; junk and absence give None."""
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC), usegmt=True)
    earlier = format_datetime(datetime(2029, 12, 31, tzinfo=UTC), usegmt=True)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(later, now) == pytest.approx(30.0)
    assert parse_retry_after(earlier, now) == 0.0
    for junk in (None, "", "soon", "-3", "nan", "inf", "Mon, 99 Foo 2030 00:00:00 GMT"):
        assert parse_retry_after(junk, now) is None


@given(st.text(max_size=60))
def test_retry_after_never_raises(value: str) -> None:
    """Any header value gives a non-negative number or None."""
    result = parse_retry_after(value, 1_700_000_000.0)
    assert result is None or result >= 0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthError),
        (403, AuthError),
        (413, PayloadTooLargeError),
        (429, RateLimitedError),
        (500, ServerUnavailableError),
        (503, ServerUnavailableError),
        (400, PermanentError),
        (404, PermanentError),
        (302, ProtocolError),
        (204, ProtocolError),
    ],
)
def test_status_mapping(status: int, error: type[Exception]) -> None:
    """Each status maps to its typed error, with the server's detail in the message."""
    body = json.dumps({"error": "x", "detail": "because\nreasons"}).encode()
    found = error_for_status(status, {"content-type": "application/json"}, body, now=0.0)
    assert type(found) is error
    if status >= 400:
        assert "because reasons" in str(found)
    assert error_for_status(200, {}, b"", now=0.0) is None


def test_idempotency_key_depends_on_op_ids_in_order() -> None:
    """The batch key is stable for the same op ids and changes with order or content."""
    a, b = op(1), op(2)
    assert idempotency_key([a, b]) == idempotency_key([op(1), op(2)])
    assert idempotency_key([a, b]) != idempotency_key([b, a])
    assert len(idempotency_key([a])) == 64
    # The key of earlier releases: each op id and a NUL, in order (servers may log it).
    expected = hashlib.sha256()
    for o in (a, b):
        expected.update(o.op_id.encode() + b"\x00")
    assert idempotency_key([a, b]) == expected.hexdigest()


def test_push_result_must_answer_ops_one_for_one() -> None:
    """Missing, extra, reordered or foreign op ids are protocol errors."""
    ops = [op(1), op(2)]

    def result(*ids: str) -> PushResult:
        return PushResult(results=[OpResult(op_id=i, status=OpStatus.ACCEPTED) for i in ids])

    assert check_push_result(ops, result("op-1", "op-2")).results[0].op_id == "op-1"
    for bad in (
        result("op-1"),
        result("op-1", "op-2", "op-3"),
        result("op-2", "op-1"),
        result("op-1", "zzz"),
    ):
        with pytest.raises(ProtocolError):
            check_push_result(ops, bad)


def test_an_answer_item_must_be_the_ops_own() -> None:
    """A conflict or merge answer carrying another item (or collection) is a protocol error."""
    ops = [op(1)]

    def conflict(collection: str, item_id: str | int) -> PushResult:
        item = Change(collection=collection, item_id=item_id, version=3, data={})
        return PushResult(results=[OpResult(op_id="op-1", status=OpStatus.CONFLICT, item=item)])

    assert check_push_result(ops, conflict("notes", "i1")).results[0].item is not None
    for bad in (conflict("notes", "i2"), conflict("tags", "i1"), conflict("notes", 1)):
        with pytest.raises(ProtocolError):
            check_push_result(ops, bad)


def change(version: int, collection: str = "notes") -> Change:
    return Change(collection=collection, item_id=f"i{version}", version=version, data={})


def test_changes_must_be_what_was_asked() -> None:
    """A page must stay after the cursor, in order, within the limit and the collections."""
    good = Changes(changes=[change(3), change(5)], cursor=5, has_more=True)
    assert check_changes(good, cursor=2, limit=2, collections=None) is good
    bad_pages = [
        (Changes(changes=[], cursor=1), {}),  # cursor moved backwards
        (Changes(changes=[change(2)], cursor=2), {}),  # a change not after the cursor
        (Changes(changes=[change(5), change(4)], cursor=5), {}),  # out of order
        (Changes(changes=[change(6)], cursor=5), {}),  # beyond its own cursor
        (Changes(changes=[change(3), change(4), change(5)], cursor=5), {}),  # over the limit
        (Changes(changes=[change(3, "other")], cursor=3), {"collections": ["notes"]}),
        (Changes(changes=[], cursor=2, has_more=True), {}),  # "more" without progress
    ]
    for page, extra in bad_pages:
        with pytest.raises(ProtocolError):
            check_changes(page, cursor=2, limit=2, collections=extra.get("collections"))


def test_event_stream_decoder_splits_events_across_chunks() -> None:
    """Events split across chunks, CRLF line ends and comments decode to whole events."""
    decoder = EventStreamDecoder()
    assert decoder.feed(b"retry: 2000\n\n: keep-alive\n\nid: 1\nevent: he") == []
    assert decoder.feed(b'ad\r\ndata: {"head": 1}\r\n\r\ndata: a\ndata: b\n\n') == [
        {"id": "1", "event": "head", "data": '{"head": 1}'},
        {"event": "message", "data": "a\nb"},
    ]


def test_event_stream_decoder_caps_event_size() -> None:
    """An endless event (no blank line) is refused instead of buffered forever."""
    decoder = EventStreamDecoder(max_event_bytes=100)
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: " + b"x" * 200)


# -- the backend over a mock transport ---------------------------------------------------


async def test_push_sends_msgpack_with_keys_and_token() -> None:
    """A push is msgpack with the op ids inside, an Idempotency-Key, and the bearer token."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = msgpack.unpackb(request.content)
        return packed(accepted([RemoteOp(**o) for o in body["ops"]]))

    ops = [op(1), op(2)]
    async with backend(handler) as remote:
        result = await remote.push(ops)
    assert [r.status for r in result.results] == [OpStatus.ACCEPTED] * 2
    request = seen[0]
    assert request.url == "http://sync.test/v1/push"
    assert request.headers["authorization"] == "Bearer t0k3n"
    assert request.headers["content-type"] == "application/msgpack"
    assert request.headers["idempotency-key"] == idempotency_key(ops)
    assert [o["op_id"] for o in msgpack.unpackb(request.content)["ops"]] == ["op-1", "op-2"]


async def test_empty_push_sends_nothing() -> None:
    """Pushing no ops answers no results without a request."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    async with backend(handler) as remote:
        assert (await remote.push([])).results == []


class Stream(httpx.AsyncByteStream):
    """A response body that yields chunks, then optionally breaks like a cut connection."""

    def __init__(self, *chunks: bytes, error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error


def _bad_push_answers() -> dict[str, Callable[[list[RemoteOp]], httpx.Response]]:
    def good(ops: list[RemoteOp]) -> bytes:
        return bytes(msgpack.packb(accepted(ops)))

    return {
        "not msgpack": lambda ops: httpx.Response(
            200, content=b"\xc1\xc1garbage", headers={"content-type": "application/msgpack"}
        ),
        "truncated msgpack": lambda ops: httpx.Response(
            200, content=good(ops)[:-3], headers={"content-type": "application/msgpack"}
        ),
        "cut connection": lambda ops: httpx.Response(
            200,
            stream=Stream(good(ops)[:5], error=httpx.RemoteProtocolError("peer closed")),
            headers={"content-type": "application/msgpack"},
        ),
        "reset mid-body": lambda ops: httpx.Response(
            200,
            stream=Stream(good(ops)[:5], error=httpx.ReadError("reset")),
            headers={"content-type": "application/msgpack"},
        ),
        "not json": lambda ops: httpx.Response(
            200, content=b"{results:", headers={"content-type": "application/json"}
        ),
        "html": lambda ops: httpx.Response(200, text="<html>proxy login</html>"),
        "no content type": lambda ops: httpx.Response(200, content=good(ops)),
        "results not a list": lambda ops: packed({"results": "all good"}),
        "unknown status": lambda ops: packed(
            {"results": [{"op_id": o.op_id, "status": "maybe"} for o in ops]}
        ),
        "op id of wrong type": lambda ops: packed(
            {"results": [{"op_id": 1, "status": "accepted"} for _ in ops]}
        ),
        "a list body": lambda ops: packed([1, 2, 3]),
        "extra field": lambda ops: packed(
            {"results": [{"op_id": o.op_id, "status": "accepted", "x": 1} for o in ops]}
        ),
        "missing result": lambda ops: packed(accepted(ops[:-1])),
        "foreign op id": lambda ops: packed(accepted([op(99), *ops[1:]])),
        "reordered": lambda ops: packed(accepted(list(reversed(ops)))),
        "oversized declared": lambda ops: httpx.Response(
            200, content=b"\x90" + b" " * 2000, headers={"content-type": "application/msgpack"}
        ),
        "oversized streamed": lambda ops: httpx.Response(
            200, stream=Stream(*[b" " * 600] * 4), headers={"content-type": "application/msgpack"}
        ),
        "version 2**63": lambda ops: packed(_answers(ops, version=2**63)),
        "version 0": lambda ops: packed(_answers(ops, version=0)),
        "version -1": lambda ops: packed(_answers(ops, version=-1)),
        "version as text": lambda ops: packed(_answers(ops, version="7")),
        "version as bool": lambda ops: packed(_answers(ops, version=True)),
        "version as float": lambda ops: packed(_answers(ops, version=7.0)),
        "retry_after NaN": lambda ops: packed(_answers(ops, "retry", retry_after=float("nan"))),
        "retry_after inf": lambda ops: packed(_answers(ops, "retry", retry_after=float("inf"))),
        "retry_after negative": lambda ops: packed(_answers(ops, "retry", retry_after=-1.0)),
        "retry_after of years": lambda ops: packed(_answers(ops, "retry", retry_after=1e12)),
        "reason of megabytes": lambda ops: packed(_answers(ops, "rejected", reason="x" * 5000)),
        "conflict item version 2**64": lambda ops: packed(
            _answers(
                ops,
                "conflict",
                item={"collection": "notes", "item_id": "i", "version": 2**64 - 1},
            )
        ),
        "conflict item id 2**63": lambda ops: packed(
            _answers(ops, "conflict", item={"collection": "notes", "item_id": 2**63, "version": 1})
        ),
        "conflict item deleted as 1": lambda ops: packed(
            _answers(
                ops,
                "conflict",
                item={"collection": "notes", "item_id": "i", "version": 1, "deleted": 1},
            )
        ),
        "2xx with an error body": lambda ops: packed({"error": "internal", "detail": "oops"}),
        "201 with results": lambda ops: packed(accepted(ops), status=201),
    }


def _answers(ops: list[RemoteOp], status: str = "accepted", **fields: object) -> dict[str, object]:
    return {"results": [{"op_id": o.op_id, "status": status, **fields} for o in ops]}


@pytest.mark.parametrize("case", sorted(_bad_push_answers()))
async def test_bad_push_answers_never_ack(case: str) -> None:
    """Each malformed, truncated, oversized or wrongly typed answer raises, acking nothing."""
    make = _bad_push_answers()[case]
    ops = [op(1), op(2), op(3)]
    async with backend(lambda request: make(ops), max_response_bytes=1024) as remote:
        with pytest.raises((ProtocolError, NetworkError)) as caught:
            await remote.push(ops)
    if case == "reset mid-body":
        assert type(caught.value) is NetworkError
    else:
        assert isinstance(caught.value, ProtocolError)


async def test_json_answers_are_accepted() -> None:
    """A JSON answer (Content-Type application/json) to a push is read like msgpack."""

    def handler(request: httpx.Request) -> httpx.Response:
        ops = [RemoteOp(**o) for o in msgpack.unpackb(request.content)["ops"]]
        return httpx.Response(200, json=accepted(ops))

    async with backend(handler) as remote:
        assert len((await remote.push([op(1)])).results) == 1


async def test_json_wire_format_sends_json() -> None:
    """wire_format='json' sends and asks for JSON."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["accept"] == "application/json"
        ops = [RemoteOp(**o) for o in json.loads(request.content)["ops"]]
        return httpx.Response(200, json=accepted(ops))

    async with backend(handler, wire_format="json") as remote:
        assert len((await remote.push([op(1)])).results) == 1


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (429, {"retry-after": "12"}, RateLimitedError, 12.0),
        (503, {"retry-after": "3"}, ServerUnavailableError, 3.0),
        (500, {}, ServerUnavailableError, None),
        (413, {}, PayloadTooLargeError, None),
        (400, {}, PermanentError, None),
        (403, {}, AuthError, None),
        (401, {}, AuthError, None),
    ],
)
async def test_error_statuses(
    status: int, headers: dict[str, str], error: type[Exception], retry_after: float | None
) -> None:
    """Error statuses raise their typed error with Retry-After parsed."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "e", "detail": "nope"}, headers=headers)

    async with backend(handler) as remote:
        with pytest.raises(error) as caught:
            await remote.push([op(1)])
        with pytest.raises(error):
            await remote.pull(0)
    assert type(caught.value) is error
    assert caught.value.retry_after == retry_after  # type: ignore[attr-defined]


async def test_retry_after_http_date() -> None:
    """A Retry-After given as an HTTP date becomes seconds from now."""
    when = format_datetime(datetime.now(UTC).replace(microsecond=0), usegmt=True)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": when})

    async with backend(handler) as remote:
        with pytest.raises(RateLimitedError) as caught:
            await remote.push([op(1)])
    assert caught.value.retry_after is not None
    assert 0.0 <= caught.value.retry_after <= 1.0


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.ReadTimeout("slow"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("garbage status line"),
        httpx.ReadError("reset"),
        httpx.PoolTimeout("busy"),
    ],
)
async def test_transport_errors_become_network_errors(failure: httpx.HTTPError) -> None:
    """Every httpx failure before an answer is a NetworkError (retryable)."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    async with backend(handler) as remote:
        with pytest.raises(NetworkError):
            await remote.push([op(1)])
        with pytest.raises(NetworkError):
            await remote.pull(0)


async def test_token_provider_refreshes_once_on_401() -> None:
    """A stale token gets one refresh on 401; a second 401 is an AuthError."""
    tokens = iter(["stale", "fresh", "fresher"])
    calls: list[str] = []

    async def provider() -> str:
        return next(tokens)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        if request.headers["authorization"] != "Bearer fresh":
            return httpx.Response(401, json={"error": "unauthorized", "detail": "expired"})
        return packed(accepted([op(1)]))

    remote = HttpBackend("http://sync.test", token=provider, transport=httpx.MockTransport(handler))
    async with remote:
        assert len((await remote.push([op(1)])).results) == 1
        assert calls == ["Bearer stale", "Bearer fresh"]
        with pytest.raises(AuthError):
            await remote.push([op(1)])  # "fresher" then the provider is exhausted


async def test_static_token_is_not_retried_and_missing_token_sends_none() -> None:
    """A fixed token gets no refresh; no token sends no Authorization header."""
    calls: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("authorization"))
        return httpx.Response(401)

    async with backend(handler) as remote:
        with pytest.raises(AuthError):
            await remote.pull(0)
    async with HttpBackend("http://sync.test", transport=httpx.MockTransport(handler)) as anonymous:
        with pytest.raises(AuthError):
            await anonymous.pull(0)
    assert calls == ["Bearer t0k3n", None]


async def test_token_provider_failures_and_secrecy() -> None:
    """A failing or malformed provider is an AuthError; the token never shows in errors or repr."""

    def broken() -> str:
        raise KeyError("vault down")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"detail": "forbidden"})

    for provider in (broken, lambda: "", lambda: "two words", lambda: "line\nbreak"):
        async with HttpBackend(
            "http://sync.test", token=provider, transport=httpx.MockTransport(handler)
        ) as remote:
            with pytest.raises(AuthError):
                await remote.push([op(1)])
    secret = "super-secret-token-value"
    async with HttpBackend(
        "http://sync.test", token=lambda: secret, transport=httpx.MockTransport(handler)
    ) as remote:
        with pytest.raises(AuthError) as caught:
            await remote.push([op(1)])
        assert secret not in str(caught.value)
        assert secret not in repr(remote)
        assert secret not in repr(vars(remote))


async def test_oversized_pull_pages_are_asked_for_smaller() -> None:
    """A pull page over the cap is asked for again with half the limit, down to one change."""
    limits: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        limits.append(limit)
        page = Changes(
            changes=[change(v) for v in range(1, limit + 1)], cursor=limit, has_more=True
        )
        return packed(page.model_dump(mode="json"))

    async with backend(handler, max_response_bytes=200) as remote:
        page = await remote.pull(0, 16)
    assert limits == [16, 8, 4, 2]
    assert len(page.changes) == 2
    async with backend(handler, max_response_bytes=20) as remote:
        with pytest.raises(ProtocolError):
            await remote.pull(0, 16)


async def test_pull_sends_parameters_and_validates() -> None:
    """A pull sends cursor, limit and collections, and checks the page it gets."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        page = Changes(changes=[change(4)], cursor=4, has_more=False)
        return packed(page.model_dump(mode="json"))

    async with backend(handler) as remote:
        page = await remote.pull(3, 10, collections=["notes", "tags"])
        assert page.cursor == 4
        assert (await remote.pull(3, collections=[])).changes == []
        with pytest.raises(ProtocolError):
            await remote.pull(3, 10, collections=["tags"])
    assert seen[0].url.params.multi_items() == [
        ("cursor", "3"),
        ("limit", "10"),
        ("collections", "notes"),
        ("collections", "tags"),
    ]
    assert len(seen) == 2


async def test_closed_backend_refuses_and_bad_urls() -> None:
    """Using a closed backend is a LifecycleError; non-http URLs are refused up front."""
    remote = backend(lambda request: httpx.Response(200))
    await remote.aclose()
    await remote.aclose()
    with pytest.raises(LifecycleError):
        await remote.push([op(1)])
    for url in ("ftp://x", "sync.example.com", "http://"):
        with pytest.raises(ValueError, match="http"):
            HttpBackend(url)


async def test_base_url_path_prefix_is_kept() -> None:
    """A base URL with a path prefix sends under that prefix."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return packed(Changes(changes=[], cursor=0).model_dump(mode="json"))

    async with HttpBackend("https://h.test/api", transport=httpx.MockTransport(handler)) as remote:
        await remote.pull(0)
    assert seen == ["/api/v1/pull"]


def test_client_side_imports_stay_light() -> None:
    """Importing the package, the backends and HttpBackend loads neither Starlette nor uvicorn."""
    code = (
        "import sys, nexus_store, nexus_store.backends\n"
        "from nexus_store.backends import HttpBackend\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = roots & {'starlette', 'uvicorn', 'psycopg'}\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_watch_reads_heads_and_refreshes_the_token() -> None:
    """watch() refreshes a refused token once, then yields each head event's value."""
    tokens = iter(["stale", "fresh"])
    body = (
        b"retry: 2000\n\n: keep-alive\n\n"
        b'id: 3\nevent: head\ndata: {"head": 3}\n\n'
        b'event: head\ndata: {"head": 5}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] != "Bearer fresh":
            return httpx.Response(401)
        assert request.headers["accept"] == "text/event-stream"
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    remote = HttpBackend(
        "http://sync.test", token=lambda: next(tokens), transport=httpx.MockTransport(handler)
    )
    async with remote, remote.watch() as heads:
        assert [await anext(heads), await anext(heads)] == [3, 5]
        with pytest.raises(NetworkError):
            await anext(heads)  # the stream ended


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(200, json={"head": 1}), ProtocolError),
        (
            httpx.Response(
                200,
                content=b'event: head\ndata: {"head": -1}\n\n',
                headers={"content-type": "text/event-stream"},
            ),
            ProtocolError,
        ),
        (
            httpx.Response(
                200,
                content=b"event: head\ndata: nope\n\n",
                headers={"content-type": "text/event-stream"},
            ),
            ProtocolError,
        ),
        (httpx.Response(429, headers={"retry-after": "4"}), RateLimitedError),
    ],
)
async def test_watch_refuses_bad_streams(response: httpx.Response, error: type[Exception]) -> None:
    """A non-event-stream answer, a malformed head event or an error status raises typed errors."""
    async with backend(lambda request: response) as remote:
        with pytest.raises(error):
            async with remote.watch() as heads:
                await anext(heads)


def _page(*changes: dict[str, object], cursor: object = 5, **fields: object) -> dict[str, object]:
    return {"changes": list(changes), "cursor": cursor, **fields}


_C = {"collection": "notes", "item_id": "i", "version": 4}


@pytest.mark.parametrize(
    "body",
    [
        _page(cursor=2**63),
        _page(cursor=-1),
        _page(cursor="5"),
        _page(cursor=5.0),
        _page(has_more="yes"),
        _page(has_more=1),
        _page({**_C, "version": 2**63}),
        _page({**_C, "item_id": 2**63}),
        _page({**_C, "item_id": 2**64 - 1}),
        _page({**_C, "item_id": 1.5}),
        _page({**_C, "collection": ""}),
        _page({**_C, "hlc": "h" * 65}),
        _page({**_C, "deleted": "false"}),
        _page({**_C, "data": [1, 2]}),
        _page({**_C, "data": {1: "a"}}),
    ],
    ids=repr,
)
async def test_out_of_range_pull_pages_are_protocol_errors(body: dict[str, object]) -> None:
    """A page with any field out of range or of the wrong type is a ProtocolError."""
    async with backend(lambda request: packed(body)) as remote:
        with pytest.raises(ProtocolError):
            await remote.pull(3, 10)


async def test_the_collector_runs_again_after_decoding_a_page() -> None:
    """The collector paused while a page is decoded runs again after a good page and after
    garbage, and stays off if the application had turned it off."""
    seen: list[bool] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(gc.isenabled())
        return packed(_page() if len(seen) == 1 else {"changes": "garbage"})

    assert gc.isenabled()
    async with backend(answer) as remote:
        await remote.pull(3, 10)
        assert gc.isenabled()
        with pytest.raises(ProtocolError):
            await remote.pull(3, 10)
        assert gc.isenabled()
        gc.disable()
        try:
            with pytest.raises(ProtocolError):
                await remote.pull(3, 10)
            assert not gc.isenabled()
        finally:
            gc.enable()
    assert seen == [True, True, False]


def test_clock_headers_are_read_strictly() -> None:
    """Nexus-Clock is plain ASCII milliseconds (else ignored); the local side is the midpoint."""
    reading = clock_reading(
        {"nexus-clock": "1700000000500", "nexus-clock-bound": "300000"}, sent=10.0, received=12.0
    )
    assert reading is not None
    assert (reading.server_time, reading.local_time, reading.max_offset) == (
        1_700_000_000.5,
        11.0,
        300.0,
    )
    unbounded = clock_reading({"nexus-clock": "5"}, sent=0, received=0)
    assert unbounded is not None
    assert unbounded.max_offset is None
    for junk in ("", "-5", "1e9", "٣", "1" * 16, "12.5", " "):
        assert clock_reading({"nexus-clock": junk}, sent=0, received=0) is None
    assert clock_reading({}, sent=0, received=0) is None


_ANSWER_VALUES = st.one_of(
    st.integers(min_value=-2, max_value=3),
    st.sampled_from([2**63 - 1, 2**63, True, False, None, 1.0, "1", "accepted", "retry"]),
)


@given(
    st.lists(
        st.one_of(
            st.just("plain"),
            st.dictionaries(
                st.sampled_from(["op_id", "status", "version", "reason", "extra"]),
                _ANSWER_VALUES,
                max_size=4,
            ),
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_the_fast_answer_path_agrees_with_full_validation(
    answers: list[object], wrap_more: bool
) -> None:
    """push_result_of accepts exactly what full validation accepts, with equal results."""
    ops = [op(n) for n in range(len(answers))]
    raw = [
        {"op_id": o.op_id, "status": "accepted", "version": n + 1}
        if a == "plain"
        else ({"op_id": o.op_id, **a} if isinstance(a, dict) and "op_id" not in a else a)
        for n, (o, a) in enumerate(zip(ops, answers, strict=True))
    ]
    body: dict[str, object] = {"results": raw}
    if wrap_more:
        body["more"] = 1
    try:
        expected: PushResult | None = check_push_result(ops, _validate(PushResult, body))
    except ProtocolError:
        expected = None
    try:
        got: PushResult | None = push_result_of(ops, body)
    except ProtocolError:
        got = None
    assert got == expected


def test_the_fast_answer_path_refuses_what_validation_refuses() -> None:
    """A wrong op id, a bool or out-of-range version, an extra key: all refused."""
    ops = [op(1)]
    for bad in (
        {"op_id": "other", "status": "accepted", "version": 1},
        {"op_id": ops[0].op_id, "status": "accepted", "version": True},
        {"op_id": ops[0].op_id, "status": "accepted", "version": 0},
        {"op_id": ops[0].op_id, "status": "accepted", "version": 2**63},
        {"op_id": ops[0].op_id, "status": "accepted", "version": 1, "extra": 1},
    ):
        with pytest.raises(ProtocolError):
            push_result_of(ops, {"results": [bad]})
    good = push_result_of(
        ops, {"results": [{"op_id": ops[0].op_id, "status": "accepted", "version": 7}]}
    )
    assert good == PushResult(
        results=[OpResult(op_id=ops[0].op_id, status=OpStatus.ACCEPTED, version=7)]
    )


_CHANGE_VALUES = st.one_of(
    st.integers(min_value=-2, max_value=3),
    st.sampled_from(
        [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, True, False, None, 1.0, "", "n", "x" * 64]
    ),
    st.sampled_from(["x" * 63, "x" * 65, b"n", [1], {"a": 1}, {1: "a"}, {"a": {"b": [1]}}]),
)
_CHANGE = st.fixed_dictionaries(
    {
        "collection": st.sampled_from(["notes", "x" * 63]),
        "item_id": st.one_of(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1)),
        "version": st.integers(min_value=1, max_value=2**63 - 1),
    },
    optional={
        "deleted": st.booleans(),
        "data": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), _CHANGE_VALUES)),
        "hlc": st.text(max_size=64),
    },
)


_ORDER = list(Change.model_fields)


@st.composite
def _change_pages(draw: st.DrawFn) -> object:
    changes: list[object] = draw(st.lists(_CHANGE, max_size=4))
    for n, change in enumerate(changes):
        # Every field, in the model's order (what the server sends) or in another order.
        if isinstance(change, dict) and draw(st.integers(0, 2)) > 0:
            full = {"deleted": False, "data": None, "hlc": "", **change}
            keys = draw(st.sampled_from([_ORDER, _ORDER[::-1], draw(st.permutations(_ORDER))]))
            changes[n] = {key: full[key] for key in keys}
    for change in changes:  # some field of some change gets an odd value
        if isinstance(change, dict) and draw(st.integers(0, 3)) == 0:
            field = draw(
                st.sampled_from(
                    ["collection", "item_id", "version", "deleted", "data", "hlc", "extra"]
                )
            )
            change[field] = draw(_CHANGE_VALUES)
    if changes and draw(st.integers(0, 5)) == 0:
        changes[draw(st.integers(0, len(changes) - 1))] = draw(_CHANGE_VALUES)
    cursor = draw(st.one_of(st.integers(0, 2**63 - 1), _CHANGE_VALUES))
    page: dict[str, object] = {"changes": changes, "cursor": cursor}
    if draw(st.booleans()):
        page["has_more"] = draw(st.one_of(st.booleans(), _CHANGE_VALUES))
    if draw(st.integers(0, 5)) == 0:
        page.pop(draw(st.sampled_from(["changes", "cursor"])))
    if draw(st.integers(0, 5)) == 0:
        page["extra"] = 1
    return page


def _through_msgpack(page: object) -> tuple[object, Changes | None]:
    """The page as msgpack gives it back (as it is where msgpack cannot hold it), and what
    full validation makes of it (``None``: refused)."""
    try:
        decoded = msgpack.unpackb(msgpack.packb(page), strict_map_key=False)
    except OverflowError:  # an integer msgpack cannot hold: test the value as it is
        decoded = page
    try:
        return decoded, _validate(Changes, decoded)
    except ProtocolError:
        return decoded, None


def _agrees(decoded: object, expected: Changes | None, *, from_msgpack: bool) -> Changes | None:
    """``changes_of(decoded)``, checked against full validation's ``expected``: refused
    exactly when it refuses (``None``), else equal, with the same repr and JSON."""
    try:
        got: Changes | None = changes_of(decoded, from_msgpack=from_msgpack)
    except ProtocolError:
        got = None
    assert got == expected
    if got is not None and expected is not None:
        assert repr(got) == repr(expected)
        assert got.model_dump_json() == expected.model_dump_json()
    return got


@given(_change_pages())
def test_the_fast_page_path_agrees_with_full_validation(page: object) -> None:
    """changes_of accepts exactly the pages full validation accepts, with equal changes
    (fields in the model's order, as the server sends them, or any other; and JSON pages
    always take full validation)."""
    decoded, expected = _through_msgpack(page)
    for from_msgpack in (True, False):
        got = _agrees(decoded, expected, from_msgpack=from_msgpack)
        if got is not None and expected is not None:
            assert got.model_dump() == expected.model_dump()
            for change in got.changes:
                assert list(change.__dict__) == _ORDER


@st.composite
def _server_pages(draw: st.DrawFn) -> object:
    """Pages as the server sends them (every field, in the model's order), where one
    field of some change may hold an odd value or a key may be out of place."""
    changes: list[dict[str, object]] = []
    for change in draw(st.lists(_CHANGE, max_size=4)):
        full = {"deleted": False, "data": None, "hlc": "", **change}
        full = {key: full[key] for key in _ORDER}
        odd = draw(st.integers(0, 4))
        if odd == 0:
            full[draw(st.sampled_from(_ORDER))] = draw(_CHANGE_VALUES)
        elif odd == 1:  # the same keys, one moved to the end
            full[name] = full.pop(name := draw(st.sampled_from(_ORDER)))
        elif odd == 2:
            full["extra"] = draw(_CHANGE_VALUES)
        changes.append(full)
    return {"changes": changes, "cursor": draw(st.integers(0, 2**63 - 1))}


@given(_server_pages())
def test_pages_in_the_servers_order_agree_with_full_validation(page: object) -> None:
    """A page whose changes are kept as decoded (the server's order) is accepted exactly
    when full validation accepts it, and gives the same changes."""
    decoded, expected = _through_msgpack(page)
    got = _agrees(decoded, expected, from_msgpack=True)
    if got is not None and expected is not None:
        assert [list(change.__dict__) for change in got.changes] == [_ORDER for _ in got.changes]


def test_the_fast_page_path_refuses_what_validation_refuses() -> None:
    good = {"collection": "notes", "item_id": "a", "version": 3, "deleted": False, "hlc": "h"}
    for bad in (
        {**good, "version": True},
        {**good, "version": 0},
        {**good, "item_id": 2**63},
        {**good, "item_id": False},
        {**good, "deleted": 1},
        {**good, "data": {1: "a"}},
        {**good, "hlc": "h" * 65},
        {**good, "collection": ""},
        {**good, "extra": 1},
    ):
        with pytest.raises(ProtocolError):
            changes_of({"changes": [bad], "cursor": 3}, from_msgpack=True)
    page = changes_of({"changes": [good], "cursor": 3}, from_msgpack=True)
    assert page == Changes(changes=[Change.model_validate(good)], cursor=3)
