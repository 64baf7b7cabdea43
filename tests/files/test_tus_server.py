"""The server's file endpoints speak tus 1.0 (creation, offsets, checksums, termination)
to a real ``nexus-store serve`` process, and never show a partial or foreign blob."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus
from tusclient.storage.filestorage import FileStorage

from nexus_store._blob_api import encode_metadata, new_checksum
from nexus_store.testing import ServerProcess

from .conftest import limited_server

TOKENS = {"tok-a": "tenant-a", "tok-b": "tenant-b"}
TUS = {"tus-resumable": "1.0.0"}
A = {**TUS, "authorization": "Bearer tok-a"}
B = {**TUS, "authorization": "Bearer tok-b"}
PATCH = {"content-type": "application/offset+octet-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server (SQLite, blobs in a folder beside it; small limits) for the module."""
    with limited_server(
        tmp_path_factory.mktemp("tus"), TOKENS, max_blob="4MiB", quota="6MiB"
    ) as process:
        yield process


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """A plain HTTP client of the server."""
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


def _create(http: httpx.Client, data: bytes, headers: dict[str, str] = A, **meta: str) -> str:
    sha = hashlib.sha256(data).hexdigest()
    answer = http.post(
        "/v1/files",
        headers={
            **headers,
            "upload-length": str(len(data)),
            "upload-metadata": encode_metadata({"sha256": sha, **meta}),
        },
    )
    assert answer.status_code == 201, answer.text
    return answer.headers["location"].rsplit("/", 1)[1]


def test_options_say_what_the_server_supports(http: httpx.Client) -> None:
    """OPTIONS names the version, extensions, size limit, checksums and chunk limit."""
    answer = http.options("/v1/files")
    assert answer.status_code == 204
    assert answer.headers["tus-version"] == "1.0.0"
    assert set(answer.headers["tus-extension"].split(",")) >= {
        "creation",
        "creation-with-upload",
        "checksum",
        "termination",
    }
    assert int(answer.headers["tus-max-size"]) == 4 * 1024 * 1024
    assert "sha1" in answer.headers["tus-checksum-algorithm"]
    assert int(answer.headers["nexus-max-chunk"]) == 1024 * 1024


def test_upload_in_chunks_resumes_from_head_offset(http: httpx.Client) -> None:
    """Chunks go at the offset HEAD reports; the finished blob reads back whole and in ranges."""
    data = os.urandom(700_000)
    upload = _create(http, data, filename="../../etc/passwd")
    assert http.head(f"/v1/files/{upload}", headers=A).headers["upload-offset"] == "0"
    answer = http.patch(
        f"/v1/files/{upload}", headers={**A, **PATCH, "upload-offset": "0"}, content=data[:300_000]
    )
    assert answer.status_code == 204
    assert answer.headers["upload-offset"] == "300000"
    offset = int(http.head(f"/v1/files/{upload}", headers=A).headers["upload-offset"])
    answer = http.patch(
        f"/v1/files/{upload}",
        headers={**A, **PATCH, "upload-offset": str(offset)},
        content=data[offset:],
    )
    sha = hashlib.sha256(data).hexdigest()
    assert answer.status_code == 204
    assert answer.headers["nexus-blob-sha256"] == sha
    assert http.get(f"/v1/blobs/{sha}", headers=A).content == data
    part = http.get(f"/v1/blobs/{sha}", headers={**A, "range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == data[100:200]


def test_wrong_offset_is_409_and_changes_nothing(http: httpx.Client) -> None:
    """A PATCH at another offset than the server's is refused with 409."""
    data = os.urandom(1000)
    upload = _create(http, data)
    answer = http.patch(
        f"/v1/files/{upload}", headers={**A, **PATCH, "upload-offset": "10"}, content=data[10:]
    )
    assert answer.status_code == 409
    assert http.head(f"/v1/files/{upload}", headers=A).headers["upload-offset"] == "0"


@pytest.mark.parametrize("algorithm", ["sha1", "crc32c", "crc32"])
def test_checksum_mismatch_is_460_and_keeps_nothing(http: httpx.Client, algorithm: str) -> None:
    """A chunk whose Upload-Checksum does not match is refused (460); none of it is kept;
    the right one is taken. Every algorithm OPTIONS offers is checked alike."""
    assert algorithm in http.options("/v1/files").headers["tus-checksum-algorithm"].split(",")
    data = os.urandom(5000)
    upload = _create(http, data)
    summer = new_checksum(algorithm)
    summer.update(data[:2000])
    right = base64.b64encode(summer.digest()).decode()
    damaged = bytes([data[0] ^ 1]) + data[1:2000]
    answer = http.patch(
        f"/v1/files/{upload}",
        headers={**A, **PATCH, "upload-offset": "0", "upload-checksum": f"{algorithm} {right}"},
        content=damaged,
    )
    assert answer.status_code == 460
    assert http.head(f"/v1/files/{upload}", headers=A).headers["upload-offset"] == "0"
    answer = http.patch(
        f"/v1/files/{upload}",
        headers={**A, **PATCH, "upload-offset": "0", "upload-checksum": f"{algorithm} {right}"},
        content=data[:2000],
    )
    assert answer.status_code == 204
    assert answer.headers["upload-offset"] == "2000"
    bad_algorithm = http.patch(
        f"/v1/files/{upload}",
        headers={**A, **PATCH, "upload-offset": "2000", "upload-checksum": "whirlpool AAAA"},
        content=data[2000:],
    )
    assert bad_algorithm.status_code == 400


def test_the_crc_checksums_give_the_standard_check_values() -> None:
    """CRC-32C and CRC-32 of ``123456789`` are the published check values."""
    for algorithm, check in (("crc32c", "e3069283"), ("crc32", "cbf43926")):
        summer = new_checksum(algorithm)
        summer.update(b"123456789")
        assert summer.digest().hex() == check


def test_a_blob_that_does_not_match_its_hash_never_becomes_visible(http: httpx.Client) -> None:
    """Bytes that do not hash to the declared blob are dropped with 460: no blob, no upload."""
    declared = os.urandom(1000)
    sha = hashlib.sha256(declared).hexdigest()
    upload = _create(http, declared)
    answer = http.patch(
        f"/v1/files/{upload}",
        headers={**A, **PATCH, "upload-offset": "0"},
        content=os.urandom(1000),
    )
    assert answer.status_code == 460
    assert answer.json()["error"] == "blob_hash_mismatch"
    assert http.get(f"/v1/blobs/{sha}", headers=A).status_code == 404
    assert http.head(f"/v1/files/{upload}", headers=A).status_code == 404


def test_no_partial_blob_is_visible(http: httpx.Client) -> None:
    """Half an upload is not a blob: reads of its hash answer 404 until it is complete."""
    data = os.urandom(4000)
    sha = hashlib.sha256(data).hexdigest()
    upload = _create(http, data)
    http.patch(
        f"/v1/files/{upload}", headers={**A, **PATCH, "upload-offset": "0"}, content=data[:3999]
    )
    assert http.get(f"/v1/blobs/{sha}", headers=A).status_code == 404
    assert http.head(f"/v1/blobs/{sha}", headers=A).status_code == 404


def test_limits_answer_413_before_the_body(http: httpx.Client) -> None:
    """Over the blob limit, over the quota, or a chunk past the length: 413, nothing read."""
    too_big = http.post("/v1/files", headers={**A, "upload-length": str(4 * 1024 * 1024 + 1)})
    assert too_big.status_code == 413
    upload = _create(http, b"0123456789")
    past = http.patch(
        f"/v1/files/{upload}",
        headers={**A, **PATCH, "upload-offset": "0", "content-length": "11"},
        content=b"01234567890",
    )
    assert past.status_code == 413
    assert http.head(f"/v1/files/{upload}", headers=A).headers["upload-offset"] == "0"
    # The quota (6 MiB) counts unfinished uploads: two of 3.5 MiB do not fit.
    first = http.post("/v1/files", headers={**B, "upload-length": str(3_500_000)})
    assert first.status_code == 201
    second = http.post("/v1/files", headers={**B, "upload-length": str(3_500_000)})
    assert second.status_code == 413
    assert second.json()["error"] == "quota_exceeded"


def test_termination_drops_the_upload(http: httpx.Client) -> None:
    """DELETE ends an upload; HEAD then answers 404."""
    upload = _create(http, b"abc")
    assert http.delete(f"/v1/files/{upload}", headers=A).status_code == 204
    assert http.head(f"/v1/files/{upload}", headers=A).status_code == 404


def test_tenants_share_nothing(http: httpx.Client) -> None:
    """Another tenant can neither read a blob nor touch an upload of this one."""
    data = b"secret of tenant a"
    sha = hashlib.sha256(data).hexdigest()
    upload = _create(http, data)
    assert http.head(f"/v1/files/{upload}", headers=B).status_code == 404
    refused = http.patch(
        f"/v1/files/{upload}", headers={**B, **PATCH, "upload-offset": "0"}, content=data
    )
    assert refused.status_code == 404
    http.patch(f"/v1/files/{upload}", headers={**A, **PATCH, "upload-offset": "0"}, content=data)
    assert http.get(f"/v1/blobs/{sha}", headers=A).content == data
    assert http.get(f"/v1/blobs/{sha}", headers=B).status_code == 404
    assert http.get(f"/v1/blobs/{sha}").status_code == 401


@pytest.mark.parametrize(
    "name", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "C:%5Cx", "a%00b", "A" * 64, "x" * 65]
)
def test_path_like_names_in_urls_are_404(http: httpx.Client, name: str) -> None:
    """Blob and upload names that are not our hashes or ids are unknown, never paths."""
    assert http.get(f"/v1/blobs/{name}", headers=A).status_code == 404
    assert http.head(f"/v1/files/{name}", headers=A).status_code == 404


def test_missing_or_wrong_tus_version_is_412(http: httpx.Client) -> None:
    """Requests without Tus-Resumable 1.0.0 are refused with 412."""
    answer = http.post("/v1/files", headers={"authorization": "Bearer tok-a", "upload-length": "1"})
    assert answer.status_code == 412


# tuspy opens the file for each chunk and leaves closing it to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_standard_tus_client_uploads_to_our_server(server: ServerProcess, tmp_path: Path) -> None:
    """tuspy (a standard tus client) uploads a file in chunks with checksums, and resumes."""

    data = os.urandom(900_000)
    path = tmp_path / "report.bin"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    store = FileStorage(str(tmp_path / "urls.json"))
    try:
        client = tus.TusClient(
            f"{server.base_url}/v1/files", headers={"Authorization": "Bearer tok-a"}
        )
        first = client.uploader(
            file_path=str(path),
            chunk_size=256 * 1024,
            metadata={"sha256": sha, "filename": "report.bin"},
            store_url=True,
            url_storage=store,
            upload_checksum=True,
            retry_delay=0,
        )
        first.upload_chunk()
        first.upload_chunk()
        assert first.offset == 512 * 1024
        # A new uploader with the same URL storage resumes where the first stopped.
        second = client.uploader(
            file_path=str(path),
            chunk_size=256 * 1024,
            metadata={"sha256": sha, "filename": "report.bin"},
            store_url=True,
            url_storage=store,
            upload_checksum=True,
            retry_delay=0,
        )
        assert second.url == first.url
        assert second.offset == 512 * 1024
        second.upload()
    finally:
        store.close()
    with httpx.Client(base_url=server.base_url) as http:
        assert http.get(f"/v1/blobs/{sha}", headers=A).content == data


def _create_with(http: httpx.Client, data: bytes, checksum: bytes, **extra: str) -> httpx.Response:
    sha = hashlib.sha256(data).hexdigest()
    return http.post(
        "/v1/files",
        headers={
            **A,
            "upload-length": str(len(data)),
            "upload-metadata": encode_metadata({"sha256": sha}),
            "upload-checksum": f"sha1 {base64.b64encode(checksum).decode()}",
            **extra,
        },
        content=data,
    )


def test_creation_with_upload_takes_the_first_chunk(http: httpx.Client) -> None:
    """A POST with a body creates the upload and keeps the body (one request for a small
    file); a body whose checksum fails is not kept, and the offset says so."""
    data = os.urandom(30_000)
    answer = _create_with(
        http, data, hashlib.sha1(data).digest(), **{"content-type": PATCH["content-type"]}
    )
    assert answer.status_code == 201
    assert answer.headers["upload-offset"] == str(len(data))
    sha = hashlib.sha256(data).hexdigest()
    assert http.get(f"/v1/blobs/{sha}", headers=A).content == data
    other = os.urandom(30_000)
    refused = _create_with(
        http, other, hashlib.sha1(b"x").digest(), **{"content-type": PATCH["content-type"]}
    )
    assert refused.status_code == 201
    assert refused.headers["upload-offset"] == "0"
    missing = http.get(f"/v1/blobs/{hashlib.sha256(other).hexdigest()}", headers=A)
    assert missing.status_code == 404
    plain = _create_with(http, other, hashlib.sha1(other).digest())
    assert plain.status_code == 415, "a body needs Content-Type: application/offset+octet-stream"
