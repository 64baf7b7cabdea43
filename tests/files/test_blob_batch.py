"""Small blobs many at a time (``POST /v1/blobs``) to a real ``nexus-store serve`` process:
each blob verified and stored whole or refused alone with a typed error; a body that is not
a batch stores nothing; limits, quota and tokens as for tus; and a store's sync sends its
small uploads this way, a changed file still dead-lettered alone."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from nexus_store import NexusStore
from nexus_store._blob_api import BATCH_TYPE, BatchEntry, encode_manifest
from nexus_store.backends import HttpBackend
from nexus_store.files import UploadState
from nexus_store.testing import ServerProcess

from .conftest import limited_server

TOKENS = {"tok-a": "tenant-a", "tok-b": "tenant-b"}
A = {"authorization": "Bearer tok-a"}
B = {"authorization": "Bearer tok-b"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server (SQLite, blobs in a folder beside it; small limits) for the module."""
    with limited_server(
        tmp_path_factory.mktemp("batch"), TOKENS, max_blob="300KiB", quota="2MiB"
    ) as process:
        yield process


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """A plain HTTP client of the server."""
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


def _batch(blobs: list[tuple[str, bytes]]) -> tuple[dict[str, str], bytes]:
    manifest = encode_manifest([BatchEntry(sha, len(data)) for sha, data in blobs])
    headers = {"content-type": BATCH_TYPE, "nexus-manifest-length": str(len(manifest))}
    return headers, manifest + b"".join(data for _, data in blobs)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_options_say_how_big_a_batch_may_be(http: httpx.Client) -> None:
    """OPTIONS names the largest batch body (the chunk limit)."""
    answer = http.options("/v1/files")
    assert int(answer.headers["nexus-max-batch"]) == 1024 * 1024


def test_a_batch_stores_good_blobs_and_refuses_bad_ones_alone(http: httpx.Client) -> None:
    """Good blobs are stored (201, then 200 when sent again); a wrong hash (460), a bad name
    (400) and a blob over the size limit (413) are refused alone, typed, never readable."""
    good, other, wrong = os.urandom(20_000), os.urandom(1), os.urandom(500)
    big = os.urandom(310 * 1024)
    liar = _sha(b"something else")
    blobs = [(_sha(good), good), (liar, wrong), ("../../etc/x", b"ab"), (_sha(big), big)]
    blobs.append((_sha(other), other))
    headers, body = _batch(blobs)
    answer = http.post("/v1/blobs", headers={**A, **headers}, content=body)
    assert answer.status_code == 200, answer.text
    got = [(a["status"], a["error"]) for a in answer.json()["blobs"]]
    assert got == [
        (201, None),
        (460, "blob_hash_mismatch"),
        (400, "bad_hash"),
        (413, "blob_too_large"),
        (201, None),
    ]
    assert http.get(f"/v1/blobs/{_sha(good)}", headers=A).content == good
    for missing in (liar, _sha(big)):
        assert http.head(f"/v1/blobs/{missing}", headers=A).status_code == 404
    again = http.post("/v1/blobs", headers={**A, **headers}, content=body)
    assert again.json()["blobs"][0]["status"] == 200


def test_tenants_and_tokens_hold_for_batches(http: httpx.Client) -> None:
    """No token: 401, nothing stored; another tenant neither sees nor reads the blobs."""
    data = os.urandom(1000)
    headers, body = _batch([(_sha(data), data)])
    assert http.post("/v1/blobs", headers=headers, content=body).status_code == 401
    assert http.head(f"/v1/blobs/{_sha(data)}", headers=A).status_code == 404
    assert http.post("/v1/blobs", headers={**A, **headers}, content=body).status_code == 200
    assert http.head(f"/v1/blobs/{_sha(data)}", headers=B).status_code == 404


@pytest.mark.parametrize(
    ("manifest", "tail", "code"),
    [
        (b"not json", b"", "bad_manifest"),
        (b'{"sha256": "x"}', b"", "bad_manifest"),
        (b'[{"sha256": "ab", "size": -1}]', b"", "bad_manifest"),
        (b'[{"sha256": "ab", "size": 5}]', b"abc", "bad_manifest"),
    ],
)
def test_a_body_that_is_not_a_batch_stores_nothing(
    http: httpx.Client, manifest: bytes, tail: bytes, code: str
) -> None:
    """Garbage, a manifest of the wrong shape or sizes that do not add up: 400 for the whole
    request, with its code."""
    headers = {"content-type": BATCH_TYPE, "nexus-manifest-length": str(len(manifest))}
    answer = http.post("/v1/blobs", headers={**A, **headers}, content=manifest + tail)
    assert answer.status_code == 400
    assert answer.json()["error"] == code


def test_wrong_type_or_missing_manifest_length_is_refused(http: httpx.Client) -> None:
    """Another content type is 415; no manifest length is 400."""
    data = b"x"
    headers, body = _batch([(_sha(data), data)])
    plain = {**A, "nexus-manifest-length": headers["nexus-manifest-length"]}
    assert http.post("/v1/blobs", headers=plain, content=body).status_code == 415
    no_length = {**A, "content-type": BATCH_TYPE}
    answer = http.post("/v1/blobs", headers=no_length, content=body)
    assert (answer.status_code, answer.json()["error"]) == (400, "bad_manifest")


def test_a_batch_over_the_limit_is_refused_before_its_body(server: ServerProcess) -> None:
    """A Content-Length over the batch limit gets 413 with no byte of the body sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /v1/blobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-a\r\n"
                f"content-type: {BATCH_TYPE}\r\nnexus-manifest-length: 10\r\n"
                f"content-length: {2 * 1024 * 1024}\r\n\r\n"
            ).encode()
        )
        answer = sock.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413")


def test_a_blob_over_the_quota_is_refused_alone(server: ServerProcess, tmp_path: Path) -> None:
    """With the tenant near its quota, the blob that would pass it is 413 quota_exceeded
    and the others in the batch are stored."""
    token = {"authorization": "Bearer tok-q"}
    folder = tmp_path / "q"
    with (
        ServerProcess(
            f"sqlite:///{folder}.db",
            tokens={"tok-q": "tenant-q"},
            args=["--blob-quota", "100KiB"],
        ) as quota_server,
        httpx.Client(base_url=quota_server.base_url, timeout=10) as http,
    ):
        small, large, last = os.urandom(10_000), os.urandom(95_000), os.urandom(10_000)
        headers, body = _batch([(_sha(d), d) for d in (small, large, last)])
        answer = http.post("/v1/blobs", headers={**token, **headers}, content=body)
        got = [(a["status"], a["error"]) for a in answer.json()["blobs"]]
        assert got == [(201, None), (413, "quota_exceeded"), (201, None)]


class Doc(BaseModel):
    id: str


def test_sync_sends_small_uploads_in_batches_and_dead_letters_a_changed_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A store's sync sends its small uploads in batches (no tus upload is made on the
    server); a linked file changed after enqueue, in the middle, is dead-lettered alone."""
    store: NexusStore[Doc, str] = NexusStore(
        tmp_path / "app.db", model=Doc, backend=HttpBackend(server.base_url, token="tok-b")
    )
    sources = []
    for n in range(40):
        path = tmp_path / f"f{n:02d}.bin"
        path.write_bytes(os.urandom(2000 + n))
        store.upload(path, tag="many")
        sources.append(path)
    uploads_before = _tus_uploads(server)
    with sources[20].open("r+b") as handle:  # written in place: its link sees it
        handle.write(b"XX")
    summary = store.sync()
    assert (summary.uploaded, summary.dead_lettered) == (39, 1)
    states = [u.state for u in store.uploads("many")]
    assert states.count(UploadState.DONE) == 39
    assert states[20] is UploadState.DEAD
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for path in sources[:20] + sources[21:]:
            data = path.read_bytes()
            assert http.get(f"/v1/blobs/{_sha(data)}", headers=B).content == data
    assert _tus_uploads(server) == uploads_before, "no tus upload was needed"
    store.close()


def _tus_uploads(server: ServerProcess) -> int:
    """The upload records the server's blob folder holds (tus uploads leave one each)."""
    root = Path(server.database.removeprefix("sqlite:///") + "-blobs")
    assert root.is_dir()
    return len(list(root.glob("t/*/uploads/*.json")))


def test_manifest_is_compact_json() -> None:
    """The manifest is a JSON list of sha256 and size (what other clients send)."""
    assert json.loads(encode_manifest([BatchEntry("ab", 3)])) == [{"sha256": "ab", "size": 3}]


def test_the_batch_endpoint_is_in_the_openapi_document(http: httpx.Client) -> None:
    """/openapi.json describes POST /v1/blobs: its manifest header and per-blob answers."""
    spec = http.get("/openapi.json").json()
    post = spec["paths"]["/v1/blobs"]["post"]
    assert post["parameters"][0]["name"] == "nexus-manifest-length"
    assert BATCH_TYPE in post["requestBody"]["content"]
    assert {"200", "400", "413"} <= set(post["responses"])
