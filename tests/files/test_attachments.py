"""Attachments on items: content-addressed, deduplicated, uploaded before the records that
refer to them, fetched lazily or eagerly, cached with LRU eviction (in-process server)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import (
    BlobNotFoundError,
    FileTransferError,
    ItemValidationError,
    NexusStore,
    OpState,
    SyncPriority,
)
from nexus_store._blob_api import blob_refs
from nexus_store.backends import Changes, MemoryBackend, PushResult, RemoteBackend, RemoteOp
from nexus_store.files import Attachment, FilePolicy
from nexus_store.server.blobs import (
    BlobLimits,
    GarbageReport,
    collect_unreferenced_blobs,
    in_process_blobs,
)
from nexus_store.sync.engine import SyncProgress, SyncRunner, TransferKind, TransferState


class Photo(BaseModel):
    id: str
    title: str = ""
    image: Attachment | None = None


class Album(BaseModel):
    id: str
    pages: list[Attachment] = []


class BlobOrderBackend(RemoteBackend):
    """A client of an in-process server that checks, at every push, that each record's
    blobs are already on the server (the ordering the files promise)."""

    def __init__(self, inner: MemoryBackend) -> None:
        self.inner = inner
        self.too_early: list[str] = []

    async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
        service = in_process_blobs(self.inner.core)
        for op in ops:
            for sha in _shas(op.data):
                if await service.storage.stat(self.inner.tenant, sha) is None:
                    self.too_early.append(str(op.item_id))
        return await self.inner.push(ops)

    async def pull(
        self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
    ) -> Changes:
        return await self.inner.pull(cursor, limit, collections=collections)


def _shas(data: object) -> list[str]:
    return sorted(blob_refs(data))


def _store(tmp_path: Path, name: str, backend: RemoteBackend, model: type = Photo) -> NexusStore:
    return NexusStore(tmp_path / f"{name}.db", model=model, backend=backend, owns_backend=False)


def test_a_record_is_sent_only_after_its_blob(tmp_path: Path) -> None:
    """The record that refers to an attachment is pushed only once its blob is on the server."""
    backend = BlobOrderBackend(MemoryBackend())
    store = _store(tmp_path, "a", backend)
    data = os.urandom(200_000)
    ref = store.attach("p1", data, name="beach.jpg")
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.content_type == "image/jpeg"
    store.save(Photo(id="p1", title="beach", image=ref))
    [record] = store.pending()
    assert record.state is OpState.LEASED, "the record waits (held) for its blob"
    summary = store.sync()
    assert summary.uploaded == 1
    assert summary.pushed == 1
    assert backend.too_early == []
    assert store.queue.stats().live == 0
    store.close()


def test_many_small_attachments_settle_in_few_transactions_records_after_blobs(
    tmp_path: Path,
) -> None:
    """Hundreds of small attachments: batches carry their blobs, and the run leases and
    settles their upload ops many to a transaction (not one or two per file); each
    record still goes only after its blob, and every op is settled."""
    backend = BlobOrderBackend(MemoryBackend())
    store = _store(tmp_path, "many", backend)
    count = 450  # more than two batches
    for n in range(count):
        ref = store.attach(f"p{n}", os.urandom(3000 + n), name=f"{n}.jpg")
        store.save(Photo(id=f"p{n}", image=ref))
    transactions = 0

    def trace(sql: str) -> None:
        nonlocal transactions
        transactions += sql.startswith("BEGIN")

    store.database.conn.set_trace_callback(trace)
    try:
        summary = store.sync()
    finally:
        store.database.conn.set_trace_callback(None)
    assert (summary.uploaded, summary.pushed) == (count, count)
    assert backend.too_early == []
    assert store.queue.stats().live == 0
    assert transactions < count // 4, transactions
    store.close()


def test_one_stuck_file_never_blocks_other_items(tmp_path: Path) -> None:
    """A blob the server refuses keeps its own record back; other items still sync."""
    inner = MemoryBackend()
    in_process_blobs(inner.core).limits = BlobLimits(max_blob_bytes=1000)
    store = _store(tmp_path, "a", inner)
    big = store.attach("p1", os.urandom(5000))
    store.save(Photo(id="p1", image=big))
    store.save(Photo(id="p2", title="no file"))
    small = store.attach("p3", os.urandom(10))
    store.save(Photo(id="p3", image=small))
    summary = store.sync()
    assert summary.dead_lettered == 1
    assert {op.item_id for op in store.queue.dead()} == {f"up:{big.sha256}"}
    [waiting] = store.pending()
    assert waiting.item_id == "p1"
    changes = inner.core.storage
    assert changes is not None
    pulled = store.sync()
    assert pulled.pushed == 0
    other = _store(tmp_path, "b", MemoryBackend(inner.core))
    other.sync()
    assert other.get("p2") is not None
    assert other.get("p3") is not None
    assert other.get("p1") is None, "the record of the stuck file stays back"
    # Discarding the stuck upload lets the record go as it is.
    store.queue.discard([op.op_id for op in store.queue.dead()])
    store.sync()
    other.sync()
    assert other.get("p1") is not None
    store.close()
    other.close()


def test_same_bytes_are_one_blob_locally_and_on_the_server(tmp_path: Path) -> None:
    """Attaching the same bytes twice queues one upload; another device's copy is not sent."""
    inner = MemoryBackend()
    store = _store(tmp_path, "a", inner)
    data = os.urandom(200_000)  # above WITH_CREATION: a known blob costs no bytes
    one = store.attach("p1", data)
    two = store.attach("p2", io.BytesIO(data), priority=SyncPriority.HIGH)
    assert one.sha256 == two.sha256
    [upload] = [op for op in store.queue.pending() if op.collection == "nx_files"]
    assert upload.priority is SyncPriority.HIGH, "coalesced into one op, the more urgent"
    assert store.sync().uploaded == 1
    again = store.attach("p3", data)
    assert [op for op in store.queue.pending() if op.collection == "nx_files"] == []
    assert again.sha256 == one.sha256
    phone = _store(tmp_path, "b", MemoryBackend(inner.core))
    phone.attach("q1", data)
    summary = phone.sync()
    assert summary.uploaded == 1
    assert summary.transferred_bytes == 0, "the server had the blob: nothing was sent"
    blobs = list((tmp_path / "a.db-blobs" / "objects").rglob("*"))
    assert len([p for p in blobs if p.is_file()]) == 1
    store.close()
    phone.close()


def test_attachments_detach_and_open(tmp_path: Path) -> None:
    """attachments() lists attached and referenced blobs; detach forgets; open reads local."""
    store = _store(tmp_path, "a", MemoryBackend())
    first = store.attach("p1", b"first", name="a.txt")
    second = store.attach("p1", b"second", name="b.txt")
    store.save(Photo(id="p1", image=first))
    assert {a.sha256 for a in store.attachments("p1")} == {first.sha256, second.sha256}
    with store.open_attachment(second) as handle:
        assert handle.read() == b"second"
    assert store.detach(second, "p1")
    assert not store.detach(second, "p1")
    assert [a.sha256 for a in store.attachments("p1")] == [first.sha256]
    ups = [op.item_id for op in store.queue.pending() if op.collection == "nx_files"]
    assert ups == [f"up:{first.sha256}"], "the detached blob's upload is cancelled"
    store.close()


def test_pulled_attachments_are_fetched_when_opened(tmp_path: Path) -> None:
    """A device that pulled a record fetches its blob on open (and keeps it)."""
    inner = MemoryBackend()
    camera = _store(tmp_path, "camera", inner)
    data = os.urandom(3 * 1024 * 1024 + 5)
    ref = camera.attach("p1", data)
    camera.save(Photo(id="p1", image=ref))
    camera.sync()
    viewer = _store(tmp_path, "viewer", MemoryBackend(inner.core))
    viewer.sync()
    pulled = viewer.get("p1")
    assert pulled is not None
    assert pulled.image == ref
    with viewer.open_attachment(pulled.image) as handle:
        assert handle.read() == data
    assert (tmp_path / "viewer.db-blobs" / "objects" / ref.sha256[:2] / ref.sha256).exists()
    offline = NexusStore(tmp_path / "viewer.db", model=Photo)
    with offline.open_attachment(ref) as handle:  # now local: no backend needed
        assert handle.read(4) == data[:4]
    with pytest.raises(BlobNotFoundError):
        offline.open_attachment(hashlib.sha256(b"nowhere").hexdigest())
    camera.close()
    viewer.close()
    offline.close()


def test_prefetch_all_fetches_in_the_run_that_pulled(tmp_path: Path) -> None:
    """With prefetch="all", a sync run downloads the attachments of what it pulled."""
    inner = MemoryBackend()
    camera = _store(tmp_path, "camera", inner, Album)
    pages = [camera.attach("a1", os.urandom(1000 + n)) for n in range(3)]
    camera.save(Album(id="a1", pages=pages))
    camera.sync()
    viewer = _store(tmp_path, "viewer", MemoryBackend(inner.core), Album)
    viewer.configure_files(prefetch="all")
    summary = viewer.sync()
    assert summary.downloaded == 3
    for page in pages:
        assert (tmp_path / "viewer.db-blobs" / "objects" / page.sha256[:2] / page.sha256).exists()
    picky = _store(tmp_path, "picky", MemoryBackend(inner.core), Album)
    picky.configure_files(prefetch=lambda ref: ref.size < 1001)
    assert picky.sync().downloaded == 1
    camera.close()
    viewer.close()
    picky.close()


def test_cache_limit_evicts_least_recently_used_synced_blobs(tmp_path: Path) -> None:
    """Beyond the cache limit, local copies the server has go, least recently used first."""
    inner = MemoryBackend()
    camera = _store(tmp_path, "camera", inner, Album)
    pages = [camera.attach("a1", os.urandom(10_000)) for _ in range(4)]
    camera.save(Album(id="a1", pages=pages))
    camera.sync()
    viewer = _store(tmp_path, "viewer", MemoryBackend(inner.core), Album)
    viewer.configure_files(FilePolicy(cache_limit_bytes=25_000), prefetch="all")
    viewer.attach("mine", os.urandom(30_000))
    viewer.sync()  # uploads it too; downloads four pages, evicting as it goes
    local = {p.name for p in (tmp_path / "viewer.db-blobs" / "objects").rglob("*") if p.is_file()}
    assert len(local & {p.sha256 for p in pages}) <= 2
    with viewer.open_attachment(pages[0]) as handle:  # fetched again on demand
        assert len(handle.read()) == 10_000
    camera.close()
    viewer.close()


@pytest.mark.parametrize(
    "name", ["../../x", "/etc/passwd", "C:\\x", "\uff45\uff54\uff43\uff0fpasswd", "a" * 255]
)
def test_path_like_names_never_become_paths(tmp_path: Path, name: str) -> None:
    """A name is metadata: the blob is stored under its hash, nothing else is created."""
    folder = tmp_path / "one" / "two"
    folder.mkdir(parents=True)
    store = NexusStore(folder / "a.db", model=Photo, backend=MemoryBackend())
    ref = store.attach("p1", b"named", name=name)
    assert ref.name == name
    store.sync()
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert all(p.startswith("one/two/") for p in created), created
    assert not any(name in p for p in created)
    store.close()


def test_bad_names_and_sources_are_typed_errors(tmp_path: Path) -> None:
    """NUL or control characters in a name, a missing file, a text stream: typed errors,
    nothing queued."""
    store = _store(tmp_path, "a", MemoryBackend())
    with pytest.raises(ItemValidationError):
        store.attach("p1", b"x", name="a\x00b")
    with pytest.raises(ItemValidationError):
        store.attach("p1", b"x", name="line\nbreak")
    with pytest.raises(FileTransferError):
        store.attach("p1", tmp_path / "missing.jpg")
    with pytest.raises(ItemValidationError):
        store.attach("p1", io.StringIO("text"))
    with pytest.raises(ItemValidationError):
        store.attach("p1", 42)  # type: ignore[arg-type]
    with pytest.raises(ItemValidationError):
        store.open_attachment("../../etc/passwd")
    assert store.queue.stats().total == 0
    store.close()


def test_a_linked_file_changed_after_enqueue_is_dead_lettered(tmp_path: Path) -> None:
    """A hard-linked source written in place after enqueue is caught by its hash/stat and
    dead-lettered with the reason, never uploaded half-changed."""
    store = _store(tmp_path, "a", MemoryBackend())
    source = tmp_path / "report.pdf"
    source.write_bytes(b"v1" * 1000)
    upload = store.upload(source, tag="reports")
    assert os.stat(source).st_nlink == 2, "taken as a hard link"
    with source.open("r+b") as handle:  # written in place: the link sees it
        handle.write(b"XX")
    summary = store.sync()
    assert summary.dead_lettered == 1
    [listed] = store.uploads("reports")
    assert listed.upload_id == upload.upload_id
    assert listed.state.value == "dead"
    assert "changed" in (listed.error or "")
    store.close()


def test_a_deleted_source_still_uploads_from_its_copy(tmp_path: Path) -> None:
    """The file is taken at enqueue (link or copy): the app may delete it at once."""
    inner = MemoryBackend()
    store = _store(tmp_path, "a", inner)
    source = tmp_path / "clip.mp4"
    data = os.urandom(40_000)
    source.write_bytes(data)
    store.upload(source)
    source.unlink()
    assert store.sync().uploaded == 1
    sha = hashlib.sha256(data).hexdigest()

    async def stored() -> object:
        return await in_process_blobs(inner.core).storage.stat(inner.tenant, sha)

    assert anyio.run(stored) is not None
    assert [u.state.value for u in store.uploads()] == ["done"]
    store.close()


def test_garbage_collection_keeps_only_referenced_blobs(tmp_path: Path) -> None:
    """Server GC deletes blobs no record refers to (past the grace), keeps the others."""
    inner = MemoryBackend()
    store = _store(tmp_path, "a", inner)
    kept = store.attach("p1", b"kept" * 100)
    store.save(Photo(id="p1", image=kept))
    dropped = store.attach("p2", b"dropped" * 100)
    store.save(Photo(id="p2", image=dropped))
    loose = store.attach("p3", b"never referenced" * 10)
    store.sync()
    store.save(Photo(id="p2", title="no picture any more"))
    store.sync()
    service = in_process_blobs(inner.core)

    async def collect(grace: float) -> tuple[GarbageReport, set[str]]:
        report = await collect_unreferenced_blobs(inner.core, service, inner.tenant, grace=grace)
        left = {b.sha256 for b in await service.storage.list_blobs(inner.tenant)}
        return report, left

    report, left = anyio.run(collect, 3600.0)
    assert report.blobs == 0, "young blobs are kept: their records may be on their way"
    report, left = anyio.run(collect, 0.0)
    assert left == {kept.sha256}
    assert report.blobs == 2
    assert loose.sha256 not in left
    assert dropped.sha256 not in left
    store.close()


def test_progress_reports_bytes_rate_and_priority_per_transfer(tmp_path: Path) -> None:
    """A run's progress stream carries each transfer's bytes (rising to the total), its
    state, and the bytes per priority."""
    store = _store(tmp_path, "a", MemoryBackend())
    store.configure_files(FilePolicy(chunk_size=256 * 1024))
    data = os.urandom(1024 * 1024 + 3)
    ref = store.attach("p1", data, name="clip.mp4", priority=SyncPriority.HIGH)
    seen: list[SyncProgress] = []

    async def run() -> None:
        runner = SyncRunner(store, store.backend)  # type: ignore[arg-type]
        runner.progress.add_callback(seen.append)
        await runner.run()

    anyio.run(run)
    mine = [t for p in seen for t in p.transfers if t.sha256 == ref.sha256]
    assert mine, "the transfer is on the progress stream"
    assert [t.done for t in mine] == sorted(t.done for t in mine), "bytes only rise"
    last = mine[-1]
    assert (last.done, last.total, last.state) == (len(data), len(data), TransferState.DONE)
    assert last.kind is TransferKind.UPLOAD
    assert last.name == "clip.mp4"
    assert seen[-1].bytes_per_priority[SyncPriority.HIGH].total == len(data)
    store.close()
