"""Power loss: a VFS keeps every write until its file is synced, and a "power cut" at random
points leaves each file as it was at its last sync (or with a random subset of the unsynced
writes on disk). With durability "full" no acknowledged save is lost; with "normal" only the
last ones (a suffix); an item is never without its op nor an op without its item, and a
save_many is never torn. See tests/powercut.py for what the shim models and what it does not.
"""

from __future__ import annotations

import collections
import importlib.util
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import NexusStore, SyncPriority
from nexus_store._codec import decode
from nexus_store._database import Database, Durability
from nexus_store._remote import PushResult, RemoteOp
from nexus_store.backends import MemoryBackend
from nexus_store.sync import WorkManagerSyncService
from nexus_store.sync.device import SimulatedDevice
from nexus_store.sync.workmanager._adapter import CRITICAL_WORK


def _load_shim() -> ModuleType:
    """tests/powercut.py (the suite imports test files by path, not as a package)."""
    name = "nexus_store_tests_powercut"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("powercut.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_shim = _load_shim()
PowerCut = _shim.PowerCut
powercut_available = _shim.powercut_available

pytestmark = pytest.mark.skipif(
    powercut_available() is not None, reason=f"power-cut VFS: {powercut_available()}"
)


class Rec(BaseModel):
    """A record saved alone or in a batch of ``size``."""

    id: str
    batch: str
    size: int
    version: int = 0
    body: str


Acked = list[list[tuple[str, int]]]
"""Each acknowledged save, in order: the (id, version) of every record it wrote."""


def _save_all(store: NexusStore[Rec, str], rng: random.Random, saves: int, acked: Acked) -> None:
    written: list[Rec] = []
    for n in range(saves):
        priority = rng.choice(list(SyncPriority))
        if written and rng.random() < 0.25:
            old = rng.choice(written)
            new = old.model_copy(
                update={"version": old.version + 1, "body": "u" * rng.randint(1, 900)}
            )
            store.save(new, priority=priority)
            written[written.index(old)] = new
            acked.append([(new.id, new.version)])
            continue
        size = rng.choice([1, 1, 1, 3, 8])
        batch = [
            Rec(id=f"b{n}-{j}", batch=f"b{n}", size=size, body="x" * rng.randint(1, 900))
            for j in range(size)
        ]
        if size == 1:
            store.save(batch[0], priority=priority)
        else:
            store.save_many(batch, priority=priority)
        written += batch
        acked.append([(r.id, r.version) for r in batch])


def _check_image(folder: Path, acked: Acked, durability: Durability) -> int:
    """Open the image as the next boot would; return how many acknowledged saves it lost."""
    with NexusStore[Rec, str](folder / "app.db", model=Rec) as store:
        assert store.database.integrity_check() == ["ok"]
        items = {r.id: r for r in store.all()}
        ops = store.pending()
        per_item = collections.Counter(op.item_id for op in ops)
        assert set(per_item) == set(items), "an item without its op, or an op without its item"
        assert max(per_item.values(), default=1) == 1
        for op in ops:
            assert decode(op.payload or b"") == items[str(op.item_id)].model_dump(mode="json")
        batches = collections.Counter(r.batch for r in items.values())
        for record in items.values():
            assert batches[record.batch] == record.size, f"save_many {record.batch} torn"
    # Whole saves, in acknowledgement order: which ones the image still holds (a record at
    # that version or a later one).
    held = [all(i in items and items[i].version >= v for i, v in ids) for ids in acked]
    lost = held.count(False)
    if durability == "full":
        assert lost == 0, f"{lost} acknowledged saves lost with durability='full'"
    else:
        kept = len(held) - lost
        assert held == [True] * kept + [False] * lost, "a save lost before a kept one"
    return lost


def _power_cuts(
    tmp_path: Path, durability: Durability, *, saves: int, cuts: int, seed: int, subset: bool
) -> tuple[int, int]:
    """Save while cutting power at random writes; check every image. (images, saves lost)."""
    rng = random.Random(seed)
    shim = PowerCut.get()
    shim.reset()
    live = tmp_path / "live"
    live.mkdir()
    acked: Acked = []
    images: list[tuple[Path, int]] = []
    points = set(rng.sample(range(1, saves * 12), cuts))

    def on_write(count: int) -> None:
        if count in points:
            folder = tmp_path / f"cut{count}"
            shim.cut(folder, rng if subset else None)
            images.append((folder, len(acked)))

    database = Database(live / "app.db", durability=durability, vfs="powercut")
    store = NexusStore[Rec, str](database, model=Rec)
    try:
        shim.on_write = on_write
        _save_all(store, rng, saves, acked)
        shim.on_write = None
        shim.cut(tmp_path / "end", rng if subset else None)  # right after the last ack
        images.append((tmp_path / "end", len(acked)))
    finally:
        shim.on_write = None
        store.close()
        database.close()
    lost_total = 0
    for folder, count in images:
        lost_total += _check_image(folder, acked[:count], durability)
        shutil.rmtree(folder)
    kind = "some unsynced writes kept" if subset else "unsynced writes lost"
    print(
        f"power loss, durability {durability} ({kind}): {len(images)} cuts over {len(acked)} "
        f"acknowledged saves, {lost_total} acknowledged saves lost in all (each a suffix)"
    )
    return len(images), lost_total


@pytest.mark.parametrize("subset", [False, True], ids=["unsynced-lost", "unsynced-partly-kept"])
def test_full_durability_loses_no_acknowledged_save(tmp_path: Path, subset: bool) -> None:
    """durability='full': a power cut at any of 12 random writes keeps every acked save."""
    images, lost = _power_cuts(tmp_path, "full", saves=80, cuts=12, seed=1 + subset, subset=subset)
    assert images > 1
    assert lost == 0


@pytest.mark.parametrize("subset", [False, True], ids=["unsynced-lost", "unsynced-partly-kept"])
def test_normal_durability_loses_only_a_suffix(tmp_path: Path, subset: bool) -> None:
    """durability='normal': a power cut may lose the last acked saves, never earlier ones,
    never half a save, never an item without its op."""
    images, lost = _power_cuts(
        tmp_path, "normal", saves=80, cuts=12, seed=3 + subset, subset=subset
    )
    assert images > 1
    assert lost > 0  # the shim does drop unsynced commits: the test can see a loss


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["full", "normal"])
@pytest.mark.parametrize("subset", [False, True], ids=["unsynced-lost", "unsynced-partly-kept"])
def test_power_cuts_many(tmp_path: Path, durability: Durability, subset: bool) -> None:
    """The same over 600 saves and 100 cuts."""
    _power_cuts(tmp_path, durability, saves=600, cuts=100, seed=7 + subset, subset=subset)


class _Held(MemoryBackend):
    """A remote whose pushes never come back (the power goes while one is on the wire)."""

    def __init__(self) -> None:
        super().__init__()
        self.pushing = anyio.Event()

    async def push(self, ops: Sequence[RemoteOp], *, writer: int | None = None) -> PushResult:
        self.pushing.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover


def test_a_run_request_lost_to_a_power_cut_is_asked_for_again(tmp_path: Path) -> None:
    """The service records its expedited run (request and start) without waiting for the
    disk. A power cut while that run pushes takes those records away, never the CRITICAL
    save: after the reboot, a new service sends the save (nothing lost)."""
    shim = PowerCut.get()
    shim.reset()
    live = tmp_path / "live"
    live.mkdir()

    async def until_pushing() -> None:
        held = _Held()
        database = Database(live / "app.db", durability="full", vfs="powercut")
        store = NexusStore[Rec, str](database, model=Rec, backend=held, owns_backend=False)
        try:
            async with WorkManagerSyncService(store, device=SimulatedDevice()) as service:
                await service.schedule_sync()  # durable: the periodic run survives
                store.save(
                    Rec(id="urgent", batch="u", size=1, body="x"), priority=SyncPriority.CRITICAL
                )
                with anyio.fail_after(10):
                    await held.pushing.wait()
                shim.cut(tmp_path / "image")  # the power goes now
                service_work = store.database.execute(
                    "SELECT count(*) FROM nx_work WHERE unique_name = ?", (CRITICAL_WORK,)
                )[0][0]
                assert service_work == 1  # recorded, running: in the live file
        finally:
            store.close()
            database.close()

    anyio.run(until_pushing)

    async def after_reboot() -> None:
        remote = MemoryBackend()
        with NexusStore[Rec, str](
            tmp_path / "image" / "app.db", model=Rec, backend=remote
        ) as store:
            lost = store.database.execute(
                "SELECT count(*) FROM nx_work WHERE unique_name = ?", (CRITICAL_WORK,)
            )[0][0]
            assert lost == 0  # the request and its start did not reach the disk
            assert store.is_pending("urgent")
            async with WorkManagerSyncService(store, device=SimulatedDevice()) as service:
                with anyio.fail_after(10):
                    while store.is_pending("urgent"):
                        await service.settle()
                        await anyio.sleep(0.01)
            assert [c.item_id for c in (await remote.pull(0)).changes] == ["urgent"]

    anyio.run(after_reboot)
