"""A client process for the crash tests: attach a file to a record and sync it.

Usage: ``python upload_child.py DB URL TOKEN FILE CHUNK``. Prints ``queued`` once the
attachment and the record are saved, then syncs (the test kills it mid-upload).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel

from nexus_store import NexusStore
from nexus_store.backends import HttpBackend
from nexus_store.files import Attachment, FilePolicy


class Photo(BaseModel):
    """The record that refers to the file (same fields as in the test)."""

    id: str
    title: str = ""
    image: Attachment | None = None


def main() -> None:
    """Attach, save, print ``queued``, sync."""
    db, url, token, source, chunk = sys.argv[1:6]
    backend = HttpBackend(url, token=token, timeout=60)
    store = NexusStore(db, model=Photo, backend=backend)
    if store.get("p1") is None:
        store.configure_files(FilePolicy(chunk_size=int(chunk), large_file_bytes=None))
        ref = store.attach("p1", Path(source), priority="high")
        store.save(Photo(id="p1", title="big", image=ref))
    print("queued", flush=True)
    store.sync()
    print("synced", flush=True)
    store.close()


if __name__ == "__main__":
    main()
