"""Files: blobs and their transfers, queued and synced like any other write (being built).

What will live here, one module per concept:

- a content-addressed local blob store (SHA-256 names, deduplicated) beside the store's
  database file;
- the upload and download ops: ``store.attach(item_id, source)``, ``store.upload(path)``
  and watched folders (``watchfiles``) enqueue them in the same priority order and with
  the same per-item rule as records (a record that references a blob is applied on the
  server only after the blob is there);
- a tus 1.0 client (resumable uploads from the last acknowledged offset after any fault),
  with byte progress on the sync event stream; a missing, changed or unreadable source is
  a permanent, clear error (a dead letter with its reason).

Imports run downward only: files may use the sync engine, the queue, the store, the
backends and the foundations; the command line, the dashboard and the benchmark tool may
use files; nothing below imports it.
"""

__all__: list[str] = []
