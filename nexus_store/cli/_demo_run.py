"""The ``nexus-store demo``: offline saves, a real sync server, priorities, a pull back.

Everything runs on this machine: the sync server is a real ``nexus-store serve``
subprocess on 127.0.0.1 with SQLite storage in a temporary folder, and the app is a
:class:`~nexus_store.NexusStore` on another SQLite file in that folder. Each claim the demo
prints is checked, and the demo fails (exit code 1) if a check fails.
"""

from __future__ import annotations

import random
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import anyio
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._priority import SyncPriority
from .._remote import RemoteOp
from .._store import NexusStore
from ..backends._http import HttpBackend
from ..queue import OpState
from ..sync._config import BackgroundSyncConfig, BackgroundSyncStatus
from ..sync._factory import BackgroundSyncServiceFactory
from ..sync.device._constraints import SystemDevice
from ..sync.device._device import SimulatedDevice
from ..sync.engine._progress import SyncProgress
from ..sync.engine._runner import SyncRunner
from ..testing._server import ServerProcess

__all__ = ["DemoResult", "run_demo"]

_TENANT = "demo"
_MIX = {
    SyncPriority.CRITICAL: 0.05,
    SyncPriority.HIGH: 0.15,
    SyncPriority.NORMAL: 0.50,
    SyncPriority.LOW: 0.30,
}


class FieldNote(BaseModel):
    """A field observation, the demo's record type."""

    id: str
    site: str
    reading: float
    note: str
    urgent: bool = False


@dataclass
class DemoResult:
    """What the demo checked: each claim with whether it held."""

    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, claim: str, held: bool) -> bool:
        """Record a claim and whether it held."""
        self.checks.append((claim, held))
        return held

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return all(held for _, held in self.checks)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _queue_table(store: NexusStore[FieldNote, str], title: str) -> Table:
    stats = store.queue.stats()
    table = Table(title=title)
    table.add_column("priority")
    for state in ("pending", "leased", "dead"):
        table.add_column(state, justify="right")
    states = (OpState.PENDING, OpState.LEASED, OpState.DEAD)
    for priority in SyncPriority:
        table.add_row(priority.name, *(str(stats.count(priority, state)) for state in states))
    return table


async def _sync_with_bars(
    console: Console, store: NexusStore[FieldNote, str], backend: HttpBackend
) -> tuple[SyncRunner, float]:
    runner = SyncRunner(store, backend, batch_size=250)
    bars = Progress(
        TextColumn("{task.description:>9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks = {p: bars.add_task(p.name, total=None) for p in SyncPriority}

    def show(progress: SyncProgress) -> None:
        for priority, counts in progress.per_priority.items():
            bars.update(tasks[priority], completed=counts.done, total=counts.total or None)

    remove = runner.progress.add_callback(show)
    started = time.perf_counter()
    with bars:
        summary = await runner.run()
        if summary.per_priority:
            for priority, part in summary.per_priority.items():
                bars.update(tasks[priority], completed=part.pushed, total=part.pushed or 1)
    remove()
    runner.last_summary = summary
    return runner, time.perf_counter() - started


async def _demo(console: Console, folder: Path, items: int, result: DemoResult) -> None:  # noqa: PLR0915 - one linear story
    rng = random.Random(7)  # noqa: S311 - reproducible demo data, not secrets
    token = secrets.token_urlsafe(16)
    store: NexusStore[FieldNote, str] = NexusStore(folder / "app.db", model=FieldNote)
    try:
        # 1. Offline: the server does not exist yet, saves still commit locally.
        console.rule("[bold]1. Saving offline")
        priorities = rng.choices(list(_MIX), weights=list(_MIX.values()), k=items)
        started = time.perf_counter()
        for i, priority in enumerate(priorities):
            store.save(
                FieldNote(
                    id=f"obs-{i:05d}",
                    site=f"site-{i % 37}",
                    reading=round(rng.uniform(0, 100), 2),
                    note=f"observation {i}",
                    urgent=priority is SyncPriority.CRITICAL,
                ),
                priority=priority,
            )
        elapsed = time.perf_counter() - started
        console.print(
            f"saved {items} items in {elapsed:.2f}s ({items / elapsed:,.0f} saves/s, each "
            "durable before save() returned)"
        )
        console.print(_queue_table(store, "sync queue while offline"))
        down_url = f"http://127.0.0.1:{_closed_port()}"
        device = SystemDevice(down_url)
        reachable = await device.probe_network()
        async with HttpBackend(down_url, token=token, timeout=2.0) as unreachable:
            offline = await SyncRunner(store, unreachable, device=device).run()
        console.print(
            f"server reachable: {reachable}; a sync run now: [yellow]{offline.message()}[/]"
        )
        result.check("offline saves are all queued", store.queue.stats().total == items)
        result.check("a sync while offline touches nothing", offline.pushed == 0)

        # 2. The server comes up; one sync run drains the queue by priority.
        console.rule("[bold]2. Server up, syncing by priority")
        with ServerProcess(f"sqlite:///{folder / 'server.db'}", tokens={token: _TENANT}) as server:
            console.print(f"sync server: nexus-store serve on {server.base_url} (SQLite storage)")
            async with HttpBackend(server.base_url, token=token) as backend:
                runner, seconds = await _sync_with_bars(console, store, backend)
                summary = runner.last_summary
                assert summary is not None
                console.print(f"sync: {summary.message()} ({items / seconds:,.0f} ops/s)")
                result.check("every op was pushed", summary.pushed == items)
                result.check("the queue is empty", store.queue.stats().total == 0)

                # 3. Check the arrival order at the server from its change sequence.
                console.rule("[bold]3. Arrival order at the server")
                second = HttpBackend(server.base_url, token=token)
                async with second:
                    versions = await _server_versions(second)
                    by_priority: dict[SyncPriority, list[int]] = {p: [] for p in SyncPriority}
                    for i, priority in enumerate(priorities):
                        by_priority[priority].append(versions[f"obs-{i:05d}"])
                    table = Table(title="server change sequence by priority")
                    table.add_column("priority")
                    table.add_column("items", justify="right")
                    table.add_column("first seq", justify="right")
                    table.add_column("last seq", justify="right")
                    for priority, seqs in by_priority.items():
                        if seqs:
                            table.add_row(
                                priority.name, str(len(seqs)), str(min(seqs)), str(max(seqs))
                            )
                    console.print(table)
                    ordered = all(
                        max(by_priority[a]) < min(by_priority[b])
                        for a, b in zip(list(SyncPriority), list(SyncPriority)[1:], strict=False)
                        if by_priority[a] and by_priority[b]
                    )
                    result.check("CRITICAL arrived first, then HIGH, NORMAL, LOW", ordered)

                    # 4. Another client edits an item; this store pulls it back.
                    console.rule("[bold]4. An edit on the server side, pulled back")
                    target = "obs-00000"
                    base = versions[target]
                    original = store.get(target)
                    assert original is not None
                    edited = original.model_copy(update={"note": "corrected on the server side"})
                    answer = await second.push(
                        [
                            RemoteOp(
                                op_id=secrets.token_hex(16),
                                collection=store.collection,
                                item_id=target,
                                kind="upsert",
                                data=edited.model_dump(mode="json"),
                                base_version=base,
                                hlc=f"{int(time.time() * 1000) + 1000:013d}-00000-second",
                            )
                        ]
                    )
                    console.print(f"second client pushed an edit: {answer.results[0].status.value}")
                    pulled = await SyncRunner(store, backend).run()
                    local = store.get(target)
                    note = local.note if local else None
                    console.print(f"this store pulled {pulled.pulled} change(s); note = {note!r}")
                    result.check(
                        "the server-side edit reached the local store",
                        local is not None and local.note == edited.note,
                    )

                # 5. The background service: a critical save overtakes a queue of low ones.
                console.rule("[bold]5. Background sync service")
                await _service_part(console, store, backend, result)
    finally:
        store.close()


async def _server_versions(backend: HttpBackend) -> dict[str, int]:
    """Every item id on the server with its version (its change sequence)."""
    versions: dict[str, int] = {}
    cursor = 0
    while True:
        page = await backend.pull(cursor, 1000)
        versions.update({str(c.item_id): c.version for c in page.changes})
        cursor = page.cursor
        if not page.has_more:
            return versions


async def _service_part(
    console: Console, store: NexusStore[FieldNote, str], backend: HttpBackend, result: DemoResult
) -> None:
    config = BackgroundSyncConfig(high_priority_debounce=timedelta(milliseconds=200))
    service = BackgroundSyncServiceFactory.create(
        store, config, backend=backend, device=SimulatedDevice()
    )
    console.print(
        f"the factory chose the [bold]{service.adapter_name}[/] adapter for this platform "
        f"(supported: {service.is_supported})"
    )
    statuses: list[BackgroundSyncStatus] = []
    service.statuses.add_callback(statuses.append)
    low_ids = [f"low-{i:04d}" for i in range(500)]
    async with service:
        store.save_many(
            [FieldNote(id=i, site="backlog", reading=0.0, note="bulk import") for i in low_ids],
            priority=SyncPriority.LOW,
        )
        console.print(f"queued {len(low_ids)} LOW saves (they wait for the periodic run)")
        runs = service.events.subscribe()
        started = time.perf_counter()
        store.save(
            FieldNote(id="alarm-1", site="site-3", reading=99.9, note="sensor alarm", urgent=True),
            priority=SyncPriority.CRITICAL,
        )
        with anyio.fail_after(30):
            async for _event in runs:
                if not store.is_pending("alarm-1"):
                    break
        runs.close()
        latency = time.perf_counter() - started
        console.print(
            f"a CRITICAL save requested an expedited run; the server acked it "
            f"{latency * 1000:.0f} ms after save() returned"
        )
        result.check(
            "schedule_sync() was accepted", (await service.schedule_sync()).value == "accepted"
        )
        with anyio.fail_after(60):
            while store.queue.stats().total or service.status is BackgroundSyncStatus.RUNNING:
                await service.settle()
                if store.queue.stats().total:
                    await service.sync_now()
        why = await service.why_not_running()
        console.print(f"why is it not running now? {why}")
    versions = await _server_versions(backend)
    alarm = versions["alarm-1"]
    low = [versions[i] for i in low_ids]
    first_low = min(low)
    console.print(f"server sequence: alarm-1 = {alarm}, LOW backlog = {first_low}..{max(low)}")
    result.check("the CRITICAL save overtook the LOW saves queued before it", alarm < first_low)
    names = " -> ".join(s.value for s in statuses)
    console.print(f"status transitions: {names}")
    result.check(
        "the service went through RUNNING and COMPLETED",
        BackgroundSyncStatus.RUNNING in statuses and BackgroundSyncStatus.COMPLETED in statuses,
    )


def run_demo(console: Console | None = None, *, items: int = 3000) -> DemoResult:
    """Run the demo in a temporary folder; return the checks it made.

    Args:
        console: where to print (a new rich console by default).
        items: how many items to save offline.
    """
    console = console or Console()
    result = DemoResult()
    with tempfile.TemporaryDirectory(prefix="nexus-store-demo-") as folder:
        anyio.run(_demo, console, Path(folder), items, result)
    table = Table(title="verified")
    table.add_column("check")
    table.add_column("held")
    for claim, held in result.checks:
        table.add_row(claim, "[green]yes[/]" if held else "[red]NO[/]")
    console.print(table)
    return result
