"""The sync server over real HTTP: a ``nexus-store serve`` process on 127.0.0.1 (SQLite).

Auth on every data endpoint, body and batch limits (413 before the body is read in
full, with and without Content-Length), formats, per-op rejection, server-sent events,
health and the OpenAPI description.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgpack
import pytest

from nexus_store import RateLimitedError
from nexus_store.backends import HttpBackend, OpStatus, RemoteOp
from nexus_store.testing import ServerProcess

MAX_BODY = 64 * 1024
MAX_BATCH = 50
TOKENS = {"tok-a": "alpha", "tok-b": "beta"}


def op(n: int, *, item: str | None = None, text: str = "hello") -> dict[str, Any]:
    item_id = item or f"item-{n}"
    return RemoteOp(
        op_id=f"op-{n}",
        collection="notes",
        item_id=item_id,
        kind="upsert",
        data={"id": item_id, "text": text},
        hlc=f"{1_700_000_000_000 + n:013d}-00000-test",
    ).model_dump(mode="json")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: SQLite storage, small limits, fast event polling."""
    db: Path = tmp_path_factory.mktemp("server") / "server.db"
    with ServerProcess(
        f"sqlite:///{db}",
        tokens=TOKENS,
        max_body=MAX_BODY,
        max_batch=MAX_BATCH,
        events_interval=0.05,
    ) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A plain httpx client of the server, with tenant alpha's token."""
    headers = {"authorization": "Bearer tok-a"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as c:
        yield c


def test_health_and_openapi_need_no_token(server: ServerProcess) -> None:
    """/health answers status, version and limits; /openapi.json is an OpenAPI 3.1 document."""
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        health = c.get("/health").json()
        spec = c.get("/openapi.json").json()
    assert health["status"] == "ok"
    assert health["limits"] == {
        "max_body_bytes": MAX_BODY,
        "max_batch_ops": MAX_BATCH,
        "max_pull_limit": 5000,
    }
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) >= {"/v1/push", "/v1/pull", "/v1/events", "/health"}
    schemas = spec["components"]["schemas"]
    assert {"PushRequest", "PushResult", "Changes", "RemoteOp", "ErrorBody"} <= set(schemas)

    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(spec))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref


@pytest.mark.anyio
@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic dG9rLWE6", "Bearer"])
async def test_every_data_endpoint_needs_a_valid_token(
    server: ServerProcess, authorization: str | None
) -> None:
    """Push, pull and events answer 401 with WWW-Authenticate without a known bearer token."""
    headers = {"authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as c:
        answers = [
            await c.post("/v1/push", json={"ops": [op(1)]}),
            await c.get("/v1/pull"),
            await c.get("/v1/events"),
        ]
    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"] == "unauthorized"


@pytest.mark.anyio
async def test_push_answers_in_the_request_format(client: httpx.AsyncClient) -> None:
    """JSON in gives JSON out, msgpack in gives msgpack out; pulls follow Accept."""
    as_json = await client.post("/v1/push", json={"ops": [op(101)]})
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json()["results"][0]["status"] == "accepted"
    as_msgpack = await client.post(
        "/v1/push",
        content=msgpack.packb({"ops": [op(102)]}),
        headers={"content-type": "application/msgpack"},
    )
    assert as_msgpack.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(as_msgpack.content)["results"][0]["op_id"] == "op-102"
    pulled_json = await client.get("/v1/pull", params={"cursor": 0})
    pulled_msgpack = await client.get("/v1/pull", headers={"accept": "application/msgpack"})
    assert pulled_json.headers["content-type"] == "application/json"
    assert msgpack.unpackb(pulled_msgpack.content) == pulled_json.json()


@pytest.mark.anyio
async def test_bad_bodies_and_parameters_are_refused(client: httpx.AsyncClient) -> None:
    """Unknown media types, undecodable bodies, non-batches and bad pull parameters are 4xx."""
    cases = [
        (
            await client.post("/v1/push", content=b"ops", headers={"content-type": "text/plain"}),
            415,
        ),
        (
            await client.post(
                "/v1/push", content=b"\xc1", headers={"content-type": "application/msgpack"}
            ),
            400,
        ),
        (
            await client.post(
                "/v1/push", content=b"{", headers={"content-type": "application/json"}
            ),
            400,
        ),
        (await client.post("/v1/push", json={"nope": []}), 400),
        (await client.post("/v1/push", json={"ops": [op(1)], "tenant": "beta"}), 400),
        (await client.post("/v1/push", json={"ops": [{"kind": "upsert"}]}), 400),
        (await client.get("/v1/pull", params={"cursor": -1}), 400),
        (await client.get("/v1/pull", params={"limit": 0}), 400),
        (await client.get("/v1/pull", params={"cursor": "x"}), 400),
        (await client.get("/v1/pull", params={"collections": "x" * 64}), 400),
    ]
    for answer, status in cases:
        assert answer.status_code == status, answer.text
        assert set(answer.json()) == {"error", "detail"}


@pytest.mark.anyio
async def test_an_invalid_op_is_rejected_alone(client: httpx.AsyncClient) -> None:
    """An op that fails validation but has an op_id is rejected; the rest of the batch applies."""
    bad = {**op(202), "kind": "replace"}
    answer = await client.post("/v1/push", json={"ops": [op(201), bad, op(203)]})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["op_id"] for r in results] == ["op-201", "op-202", "op-203"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    assert "kind" in results[1]["reason"]


@pytest.mark.anyio
async def test_too_deeply_nested_data_is_rejected_alone(client: httpx.AsyncClient) -> None:
    """Data nested deeper than 64 levels is rejected per op instead of failing the batch."""
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(600):
        deep = {"a": deep}
    poison = {**op(251), "data": deep}
    answer = await client.post(
        "/v1/push",
        content=msgpack.packb({"ops": [poison, op(252)]}),
        headers={"content-type": "application/msgpack"},
    )
    assert answer.status_code == 200
    results = msgpack.unpackb(answer.content)["results"]
    assert [r["status"] for r in results] == ["rejected", "accepted"]
    assert "64 levels" in results[0]["reason"]


@pytest.mark.anyio
async def test_batch_over_the_op_limit_is_413(client: httpx.AsyncClient) -> None:
    """A batch with more ops than --max-batch is refused whole with 413."""
    answer = await client.post(
        "/v1/push", json={"ops": [op(300 + i) for i in range(MAX_BATCH + 1)]}
    )
    assert answer.status_code == 413
    assert answer.json()["error"] == "batch_too_large"


@pytest.mark.anyio
async def test_body_over_limit_with_content_length_is_413(client: httpx.AsyncClient) -> None:
    """A declared Content-Length over the limit is refused with 413."""
    body = json.dumps({"ops": [op(1, text="x" * (MAX_BODY + 10))]}).encode()
    answer = await client.post(
        "/v1/push", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"


@pytest.mark.anyio
async def test_chunked_body_over_limit_is_413(client: httpx.AsyncClient) -> None:
    """A streamed (chunked, no Content-Length) body is counted and refused with 413."""
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(8):
            sent += 16 * 1024
            yield b" " * (16 * 1024)

    answer = await client.post(
        "/v1/push", content=body(), headers={"content-type": "application/json"}
    )
    assert answer.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413
    assert sent > MAX_BODY
    # The connection stays usable: the server discarded the rest of the body.
    assert (await client.get("/v1/pull")).status_code == 200


def _raw_request(server: ServerProcess, head: bytes, body: bytes) -> bytes:
    """Send a request head and part of a body, never finish it, and read the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_413_arrives_before_the_declared_body_is_sent(server: ServerProcess) -> None:
    """With Content-Length over the limit the answer comes before any body byte is sent."""
    head = (
        b"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-a\r\n"
        b"Content-Type: application/msgpack\r\nContent-Length: 1000000000\r\n\r\n"
    )
    assert _raw_request(server, head, b"").startswith(b"HTTP/1.1 413")


def test_413_arrives_before_a_chunked_body_ends(server: ServerProcess) -> None:
    """A chunked body is refused once its count passes the limit, though it never ended."""
    head = (
        b"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-a\r\n"
        b"Content-Type: application/msgpack\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    size = MAX_BODY + 1024
    chunk = f"{size:x}\r\n".encode() + b"\x00" * size + b"\r\n"  # no terminating 0-chunk
    assert _raw_request(server, head, chunk).startswith(b"HTTP/1.1 413")


@pytest.mark.anyio
async def test_event_stream_pokes_after_another_clients_push(server: ServerProcess) -> None:
    """A listener gets its tenant's head on connect and a poke after another client's push."""
    listener = HttpBackend(server.base_url, token="tok-a")
    writer = HttpBackend(server.base_url, token=lambda: "tok-a")
    other_tenant = HttpBackend(server.base_url, token="tok-b")
    async with listener, writer, other_tenant:
        with anyio.fail_after(20):
            async with listener.watch() as heads:
                first = await anext(heads)
                await other_tenant.push([RemoteOp(**op(400))])  # another tenant: no poke
                result = await writer.push([RemoteOp(**op(401, item="watched"))])
                assert result.results[0].status is OpStatus.ACCEPTED
                poked = await anext(heads)
    assert poked > first
    assert poked == result.results[0].version


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server allowing each tenant 2 requests at once, refilled at one per minute."""
    db = tmp_path_factory.mktemp("limited") / "server.db"
    with ServerProcess(f"sqlite:///{db}", tokens=TOKENS, rate="1/min", burst=2) as process:
        yield process


@pytest.mark.anyio
async def test_rate_limit_answers_429_with_retry_after(limited_server: ServerProcess) -> None:
    """Past its burst a tenant gets 429 with Retry-After; another tenant is not affected."""
    async with (
        HttpBackend(limited_server.base_url, token="tok-a") as alpha,
        HttpBackend(limited_server.base_url, token="tok-b") as beta,
    ):
        await alpha.pull(0)
        await alpha.push([RemoteOp(**op(500))])
        with pytest.raises(RateLimitedError) as caught:
            await alpha.pull(0)
        assert caught.value.retry_after is not None
        assert 1 <= caught.value.retry_after <= 60
        assert (await beta.pull(0)).changes == []
    async with httpx.AsyncClient(base_url=limited_server.base_url, timeout=10) as c:
        raw = await c.get("/v1/pull", headers={"authorization": "Bearer tok-a"})
    assert raw.status_code == 429
    assert raw.headers["retry-after"].isdigit()
