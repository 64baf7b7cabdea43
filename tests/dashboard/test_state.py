"""The dashboard's JSON (no browser): transfers of the files feature, with their progress."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from nexus_store import NexusStore, SyncPriority
from nexus_store.dashboard._state import read_state


class Note(BaseModel):
    id: str
    text: str = ""


def test_queued_transfers_show_name_size_priority_and_acknowledged_bytes(
    tmp_path: Path,
) -> None:
    """An attachment and a plain upload waiting in the queue are listed as transfers with the
    file's name, size and priority; the bytes the server acknowledged (the resume point)
    show as the progress; record ops are not transfers."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8" + b"x" * 70_000)
    with NexusStore(tmp_path / "app.db", model=Note) as store:
        store.save(Note(id="n1", text="with a photo"))
        attached = store.attach("n1", photo, priority=SyncPriority.HIGH)
        store.upload(tmp_path / "photo.jpg", url="http://127.0.0.1:9/upload", tag="scans")
        with store.database.transaction() as conn:
            conn.execute(
                "INSERT INTO nx_transfers (op_key, upload_id, acked, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (f"up:{attached.sha256}", "u" * 32, 65_536, time.time()),
            )
        state = read_state(store.database, store.queue)
    by_direction = {t.direction: t for t in state.transfers}
    assert set(by_direction) == {"upload", "upload (POST)"}
    up = by_direction["upload"]
    assert (up.name, up.bytes_total, up.bytes_done) == ("photo.jpg", 70_002, 65_536)
    assert (up.priority, up.state) == ("HIGH", "pending")
    post = by_direction["upload (POST)"]
    assert (post.name, post.bytes_done, post.priority) == ("photo.jpg", 0, "NORMAL")
    assert all(t.collection == "nx_files" for t in state.transfers)


def test_a_file_without_files_lists_no_transfers(tmp_path: Path) -> None:
    """A store that never held a file has no transfers (and no files tables are created)."""
    with NexusStore(tmp_path / "app.db", model=Note) as store:
        store.save(Note(id="n1"))
        state = read_state(store.database, store.queue)
    assert state.transfers == []
