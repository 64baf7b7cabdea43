"""Files end to end with a real ``nexus-store serve`` process: a record and its attachment
travel together; an upload cut by SIGKILL of the app (and a server restart) resumes from the
acknowledged offset; a flaky network costs nothing but time."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import BaseModel

from nexus_store import NexusStore, OpState, RemoteError, RetryBackoff, SystemClock
from nexus_store.backends import HttpBackend
from nexus_store.files import Attachment, FilePolicy
from nexus_store.testing import FaultMode, FaultProxy, ProxyStats, ServerProcess, SkewedClock

from .conftest import S3_ENV, MotoServer

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("upload_child.py")
TOKENS = {"tok-a": "tenant-a", "tok-b": "tenant-b", "tok-c": "tenant-c"}
CHUNK = 64 * 1024
LEASE = 31.0


class Photo(BaseModel):
    """A record with an attachment (same fields as in upload_child.py)."""

    id: str
    title: str = ""
    image: Attachment | None = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of this test (SQLite, blobs in a folder beside it)."""
    with ServerProcess(f"sqlite:///{tmp_path}/server.db", tokens=TOKENS) as process:
        yield process


@pytest.fixture
async def proxy(server: ServerProcess) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the server."""
    async with FaultProxy(server.base_url, seed=7) as running:
        yield running


def _store(path: Path, url: str, *, later: float = 0.0) -> NexusStore[Photo, str]:
    backend = HttpBackend(url, token="tok-a", timeout=30)
    # ``later``: the app comes back after the killed run's transfer lease expired (30 s).
    clock = SkewedClock(SystemClock(), later)
    return NexusStore(path, model=Photo, backend=backend, clock=clock)


def _patches(proxy: FaultProxy) -> int:
    return sum(1 for record in proxy.log if record.method == "PATCH")


async def test_a_record_and_its_file_arrive_together(server: ServerProcess, tmp_path: Path) -> None:
    """Attach, save, sync through a real server: the record waits for its blob; another
    device pulls the record and reads the file over HTTP."""
    camera = _store(tmp_path / "camera.db", server.base_url)
    data = os.urandom(300_000)
    ref = camera.attach("p1", data, name="beach.jpg")
    camera.save(Photo(id="p1", title="beach", image=ref))
    [held] = camera.pending()
    assert held.state is OpState.LEASED, "the record is held until the blob is up"
    summary = await camera.async_sync()
    assert (summary.uploaded, summary.pushed, summary.dead_lettered) == (1, 1, 0)
    assert camera.queue.stats().live == 0
    viewer = _store(tmp_path / "viewer.db", server.base_url)
    await viewer.async_sync()
    pulled = viewer.get("p1")
    assert pulled is not None
    assert pulled.image == ref
    handle = await viewer.async_open_attachment(ref)
    with handle:
        assert handle.read() == data
    await camera.aclose()
    await viewer.aclose()


async def _kill_mid_upload(
    proxy: FaultProxy, tmp_path: Path, size: int, seed: int
) -> tuple[Path, bytes, int]:
    """Run the client process until it has sent a random number of chunks, stall the
    next, SIGKILL it. Returns the database, the file's bytes and the chunks it had sent."""
    data = random.Random(seed).randbytes(size)
    source = tmp_path / "video.bin"
    source.write_bytes(data)
    chunks = -(-size // CHUNK)
    cut_after = random.Random(seed).randint(1, chunks - 2)
    db = tmp_path / "phone.db"
    child = await anyio.open_process(
        [sys.executable, str(CHILD), str(db), proxy.url, "tok-a", str(source), str(CHUNK)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def cut(_: ProxyStats) -> bool:
        # Runs as the proxy finishes each request: from the chunk after ``cut_after`` on,
        # the file endpoints stall (the app's network hangs; the server got the chunk).
        if _patches(proxy) >= cut_after and proxy.mode is FaultMode.PASS:
            proxy.set_fault(FaultMode.STALL, path_prefix="/v1/files")
        return proxy.stats.stalled >= 1

    try:
        with anyio.fail_after(60):
            await proxy.wait_until(cut)
    finally:
        child.kill()
        with anyio.fail_after(10):
            await child.wait()
        await child.aclose()
    proxy.clear()
    assert _patches(proxy) < chunks, "the upload was cut before its end"
    return db, data, _patches(proxy)


@pytest.mark.parametrize(
    "seed", [1, 2, *(pytest.param(n, marks=pytest.mark.slow) for n in range(10, 30))]
)
async def test_sigkill_mid_upload_resumes_from_the_acked_offset(
    proxy: FaultProxy, tmp_path: Path, seed: int
) -> None:
    """The app killed mid-upload: the next run resumes where the server is, re-sending at
    most one chunk; the record arrives with its blob; nothing is lost."""
    size = 40 * CHUNK + 123
    db, data, sent = await _kill_mid_upload(proxy, tmp_path, size, seed)
    phone = _store(db, proxy.url, later=LEASE)
    summary = await phone.async_sync()
    assert (summary.uploaded, summary.pushed, summary.dead_lettered) == (1, 1, 0)
    resent = sent * CHUNK + summary.transferred_bytes - size
    assert resent <= CHUNK, f"re-sent {resent} bytes"
    assert phone.queue.stats().live == 0
    viewer = _store(tmp_path / "viewer.db", proxy.url)
    await viewer.async_sync()
    pulled = viewer.get("p1")
    assert pulled is not None
    assert pulled.image is not None
    assert pulled.image.sha256 == hashlib.sha256(data).hexdigest()
    handle = await viewer.async_open_attachment(pulled.image)
    with handle:
        assert handle.read() == data, "the blob arrived whole"
    await phone.aclose()
    await viewer.aclose()


async def test_sigkill_and_server_restart_resume_the_upload(tmp_path: Path) -> None:
    """The app killed mid-upload and the server restarted: the upload still resumes from
    the server's offset (kept on disk), not from zero."""
    database = f"sqlite:///{tmp_path}/server.db"
    first = ServerProcess(database, tokens=TOKENS).start()
    port = first.port
    try:
        async with FaultProxy(first.base_url) as proxy:
            size = 24 * CHUNK + 5
            db, _, sent = await _kill_mid_upload(proxy, tmp_path, size, seed=3)
            first.kill()
            with ServerProcess(database, tokens=TOKENS, port=port):
                phone = _store(db, proxy.url, later=LEASE)
                summary = await phone.async_sync()
                assert (summary.uploaded, summary.pushed, summary.dead_lettered) == (1, 1, 0)
                assert sent * CHUNK + summary.transferred_bytes - size <= CHUNK
                assert summary.transferred_bytes < size, "resumed, not restarted"
                await phone.aclose()
    finally:
        first.stop()


async def test_a_flaky_network_costs_only_retries(proxy: FaultProxy, tmp_path: Path) -> None:
    """A third of the file requests reset or lose their answer: every file and record
    still arrives once, whole, after retries."""
    store = _store(tmp_path / "a.db", proxy.url)
    quick = RetryBackoff(base=0.001, max_delay=0.001, jitter=False)
    store.configure_files(FilePolicy(chunk_size=CHUNK, max_attempts=50, backoff=quick))
    blobs = {}
    for n in range(4):
        data = os.urandom(3 * CHUNK + n)
        ref = store.attach(f"p{n}", data)
        store.save(Photo(id=f"p{n}", image=ref))
        blobs[f"p{n}"] = data
    proxy.set_fault(FaultMode.DROP_RESPONSE, rate=0.3, path_prefix="/v1/files")
    for _ in range(60):
        if store.queue.stats().live == 0:
            break
        await store.async_sync()
    proxy.clear()
    assert store.queue.stats().live == 0
    assert store.queue.dead() == []
    assert proxy.count(path_prefix="/v1/files", action=FaultMode.DROP_RESPONSE) > 0
    viewer = _store(tmp_path / "b.db", proxy.url)
    await viewer.async_sync()
    assert viewer.count() == 4
    for item_id, data in blobs.items():
        pulled = viewer.get(item_id)
        assert pulled is not None
        assert pulled.image is not None
        handle = await viewer.async_open_attachment(pulled.image)
        with handle:
            assert handle.read() == data
    await store.aclose()
    await viewer.aclose()


async def test_servers_sharing_an_s3_store_serve_each_others_blobs(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    """Blobs on a real S3-compatible server (moto's), in multipart parts: a file sent in
    chunks through one server process is read whole from another."""
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    blobs = f"s3://{bucket}/blobs?endpoint_url={moto_server.url}"
    env = {**S3_ENV}
    args = ["--blobs", blobs]
    with (
        ServerProcess(f"sqlite:///{tmp_path}/one.db", tokens=TOKENS, args=args, env=env) as one,
        ServerProcess(f"sqlite:///{tmp_path}/two.db", tokens=TOKENS, args=args, env=env) as two,
    ):
        camera = _store(tmp_path / "camera.db", one.base_url)
        camera.configure_files(FilePolicy(chunk_size=5 * 1024 * 1024))
        data = os.urandom(11 * 1024 * 1024 + 7)
        ref = camera.attach("p1", data)
        camera.save(Photo(id="p1", image=ref))
        summary = await camera.async_sync()
        assert (summary.uploaded, summary.pushed) == (1, 1)
        await camera.aclose()
        async with httpx.AsyncClient(base_url=two.base_url, timeout=30) as http:
            auth = {"authorization": "Bearer tok-a"}
            answer = await http.get(f"/v1/blobs/{ref.sha256}", headers=auth)
            assert answer.status_code == 200
            assert answer.content == data
            tail = await http.get(
                f"/v1/blobs/{ref.sha256}", headers={**auth, "range": "bytes=11534336-"}
            )
            assert tail.status_code == 206
            assert tail.content == data[11534336:]
            other = await http.get(
                f"/v1/blobs/{ref.sha256}", headers={"authorization": "Bearer tok-b"}
            )
            assert other.status_code == 404, "another tenant does not see it"


async def test_a_small_file_goes_in_one_request(proxy: FaultProxy, tmp_path: Path) -> None:
    """A small file goes in one batch request (``POST /v1/blobs``): no tus upload, no PATCH."""
    store = _store(tmp_path / "a.db", proxy.url)
    ref = store.attach("p1", os.urandom(20_000))
    store.save(Photo(id="p1", image=ref))
    summary = await store.async_sync()
    assert (summary.uploaded, summary.pushed, summary.transferred_bytes) == (1, 1, 20_000)
    batches = [r for r in proxy.log if r.method == "POST" and r.path == "/v1/blobs"]
    assert len(batches) == 1
    assert [r for r in proxy.log if r.path == "/v1/files" and r.method == "POST"] == []
    assert _patches(proxy) == 0
    await store.aclose()


async def test_a_cut_download_resumes_with_a_range_request(
    server: ServerProcess, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A download cut midway keeps what arrived; the next open asks for the rest only
    (a range request) and the blob, checked against its hash, reads whole."""
    camera = _store(tmp_path / "camera.db", server.base_url)
    data = os.urandom(6 * 1024 * 1024 + 11)
    ref = camera.attach("p1", data)
    camera.save(Photo(id="p1", image=ref))
    await camera.async_sync()
    await camera.aclose()
    viewer = _store(tmp_path / "viewer.db", proxy.url)
    proxy.set_fault(FaultMode.TRUNCATE, path_prefix="/v1/blobs/")
    with pytest.raises(RemoteError):
        await viewer.async_open_attachment(ref)
    part = tmp_path / "viewer.db-blobs" / "tmp" / f"{ref.sha256}.part"
    kept = part.stat().st_size
    assert 0 < kept < len(data), "what arrived is kept"
    proxy.clear()
    handle = await viewer.async_open_attachment(ref)
    with handle:
        assert handle.read() == data
    assert not part.exists()
    await viewer.aclose()
