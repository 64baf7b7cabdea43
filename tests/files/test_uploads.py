"""Plain uploads: multipart POSTs to any endpoint with the queue's retry rules, tags,
cancelling, and the device constraints of large and low-priority files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from nexus_store import NexusStore, RetryBackoff, SyncPriority
from nexus_store.backends import MemoryBackend
from nexus_store.files import FilePolicy, TransferConstraints, UploadState
from nexus_store.sync.device import SimulatedDevice
from nexus_store.testing import FakeClock, RawAnswer, ScriptedRequest, ScriptedServer, http_answer

pytestmark = pytest.mark.anyio


class Note(BaseModel):
    id: str
    text: str = ""


def _store(tmp_path: Path, **kwargs: object) -> NexusStore[Note, str]:
    return NexusStore(tmp_path / "app.db", model=Note, **kwargs)  # type: ignore[arg-type]


async def test_a_post_to_any_endpoint_retries_on_the_30_60_120_schedule(tmp_path: Path) -> None:
    """A form POST answered 503 three times is retried after 30, 60 and 120 s, then sent
    whole with its field name, file name and headers."""
    answers = [503, 503, 503, 201]

    def script(request: ScriptedRequest) -> RawAnswer:
        return RawAnswer(http_answer(answers.pop(0)))

    clock = FakeClock()
    store = _store(tmp_path, clock=clock, backend=MemoryBackend())
    seed = RetryBackoff(base=30, factor=2, max_delay=120, jitter=False)
    store.configure_files(FilePolicy(backoff=seed, max_attempts=5))
    source = tmp_path / "report.csv"
    data = os.urandom(70_000)
    source.write_bytes(data)
    async with ScriptedServer(script) as endpoint:
        upload = store.upload(
            source,
            url=f"{endpoint.url}/in",
            field_name="document",
            headers={"x-api-key": "k1"},
            tag="reports",
        )
        waits = []
        for _ in range(3):
            summary = await store.async_sync()
            assert summary.failed
            [op] = store.queue.pending()
            waits.append(op.next_attempt_at - clock.now())
            clock.advance(waits[-1])
        assert [u.attempts for u in store.uploads("reports")] == [3]
        summary = await store.async_sync()
        assert summary.uploaded == 1
        assert waits == [30, 60, 120]
        request = endpoint.requests[-1]
    assert request.method == "POST"
    assert request.path == "/in"
    assert request.headers["x-api-key"] == "k1"
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert b'name="document"; filename="report.csv"' in request.body
    assert data in request.body
    [done] = store.uploads("reports")
    assert (done.upload_id, done.state) == (upload.upload_id, UploadState.DONE)
    await store.aclose()


async def test_a_refused_post_is_dead_lettered_with_its_reason(tmp_path: Path) -> None:
    """A 4xx answer is refused for good: the upload is dead with the status in its error,
    and can be retried."""
    async with ScriptedServer(lambda _: RawAnswer(http_answer(403, b"no"))) as endpoint:
        store = _store(tmp_path, backend=MemoryBackend())
        source = tmp_path / "a.bin"
        source.write_bytes(b"abc")
        store.upload(source, url=endpoint.url)
        summary = await store.async_sync()
        assert summary.dead_lettered == 1
        [dead] = store.uploads()
        assert dead.state is UploadState.DEAD
        assert "403" in (dead.error or "")
        assert store.queue.retry_dead() == 1
        await store.aclose()


def test_uploads_are_listed_and_cancelled_by_tag(tmp_path: Path) -> None:
    """cancel_uploads(tag) cancels only that tag's queued uploads; they list as cancelled."""
    store = _store(tmp_path, backend=MemoryBackend())
    for n, tag in enumerate(["a", "a", "b"]):
        path = tmp_path / f"f{n}"
        path.write_bytes(os.urandom(100 + n))
        store.upload(path, tag=tag)
    assert len(store.uploads("a")) == 2
    assert store.cancel_uploads("a") == 2
    assert {u.state for u in store.uploads("a")} == {UploadState.CANCELLED}
    assert store.sync().uploaded == 1
    assert [u.state for u in store.uploads("b")] == [UploadState.DONE]
    store.close()


def test_large_and_low_priority_files_wait_for_their_constraints(tmp_path: Path) -> None:
    """Large files wait for an unmetered network, LOW ones for a charging device; small
    files go at once; all go when the device allows."""
    device = SimulatedDevice(metered=True, charging=False)
    store = _store(tmp_path, backend=MemoryBackend())
    store.configure_files(
        FilePolicy(
            large_file_bytes=50_000,
            per_priority={SyncPriority.LOW: TransferConstraints(charging=True)},
        )
    )
    big = store.attach("n1", os.urandom(60_000))
    low = store.attach("n2", os.urandom(10), priority=SyncPriority.LOW)
    small = store.attach("n3", os.urandom(10))
    summary = store.sync(device=device)
    assert summary.uploaded == 1
    waiting = {op.item_id for op in store.queue.pending() if op.collection == "nx_files"}
    assert waiting == {f"up:{big.sha256}", f"up:{low.sha256}"}
    assert small.sha256 not in str(waiting)
    device.set(metered=False, charging=True)
    assert store.sync(device=device).uploaded == 2
    store.close()
