"""The worker benchmark's latency figure, measured for real on a few saves: the worker
subprocess drains the app's file while the in-process baseline runs in turn with it."""

from __future__ import annotations

from pathlib import Path

from nexus_store._store import NexusStore
from nexus_store.bench import _worker
from nexus_store.testing import ServerProcess


def test_the_latency_pairs_come_one_save_of_each_in_turn(tmp_path: Path) -> None:
    with ServerProcess(f"sqlite:///{tmp_path}/server.db", tokens=_worker.TOKENS) as server:
        store: NexusStore[_worker.Note, str] = NexusStore(tmp_path / "app.db", model=_worker.Note)
        worker = _worker._Worker(tmp_path / "app.db", server)
        try:
            worker.wait_for("draining")
            through, direct = _worker._measure_latency(store, tmp_path, server, 3)
        finally:
            worker.stop()
        assert len(through) == len(direct) == 3
        assert all(0 < ms < 10_000 for ms in through + direct)
        # every save went to the server: the worker's through the worker, the others in-process
        assert store.queue.stats().live == 0
        store.close()
        with NexusStore(tmp_path / "direct.db", model=_worker.Note) as own:
            assert own.queue.stats().live == 0
            assert len(own.all()) == 3 + 5
