"""Worker benchmark: CRITICAL save to server ack through ``nexus-store worker``; idle CPU.

Run: ``nexus-store bench --only worker [--quick]``, or ``python -m
nexus_store.bench._worker [--quick] [--json]`` (from a checkout also
``python benchmarks/bench_worker.py``), or import and call ``run(quick)``.

Three processes on 127.0.0.1: this one is the app, ``nexus-store serve`` (SQLite storage)
the server, ``nexus-store worker`` the daemon draining the app's file.

1. **Latency.** The app saves one ``CRITICAL`` item (durability full) and measures from the
   return of ``save()`` (the commit) until the op has left the queue, which the worker
   does in the transaction that records the server's acceptance; the app polls its file
   every 0.5 ms. 200 saves (``--quick``: 50), 50 ms apart so each finds the worker idle;
   median and p99. Target: median <= 50 ms. Baseline, in the same run: the same save and
   an in-process ``SyncRunner.run()`` (no pull) to the same server, timed to its return
   (lease, push, ack: what remains without a second process, its wake-up and scheduler).
   The two are measured in turn, one save of each, so that a load on the machine that
   comes and goes weighs on both alike. Target: median <= 2x that in-process figure.
2. **Idle CPU.** ``psutil`` CPU times of the worker over 60 s (``--quick``: 10 s) with
   nothing to do, as a share of one core. Target: <= 0.1 %. Reference in the same window:
   the idle server process.
3. **Pokes.** Two devices (two stores, each with its background service and its own
   HttpBackend, in this process), the periodic run 15 minutes away: device A saves a
   ``CRITICAL`` item; measured until it is in device B's store (B's service holds the
   server's events stream open and pulls on the poke). 30 saves (``--quick``: 10).
   Target: median <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import psutil
from pydantic import BaseModel

from .._priority import SyncPriority
from .._store import NexusStore
from ..backends import HttpBackend
from ..sync.engine import SyncRunner
from ..testing import ServerProcess

TOKENS = {
    "bench-worker": "worker",
    "bench-direct": "direct",
    "bench-poke-a": "pokes",
    "bench-poke-b": "pokes",
}
_LAUNCHER = "from nexus_store.cli import main; main()"


class Note(BaseModel):
    id: str
    text: str
    n: int


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class _Worker:
    """The worker subprocess; its output is read by a thread (a full pipe would block it)."""

    def __init__(self, db: Path, server: ServerProcess) -> None:
        options = ("--remote", server.base_url, "--interval", "300")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, "worker", "--db", str(db), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NEXUS_STORE_TOKEN": "bench-worker"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in self.lines.get(timeout=0.5):
                    return
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        raise RuntimeError(f"the worker did not print {text!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self._reader.join(20)


def _wait_acked(store: NexusStore[Note, str], item_id: str, timeout: float = 10.0) -> float:
    """Poll until the item's op left the queue; return the time it was seen gone."""
    deadline = time.perf_counter() + timeout
    while store.is_pending(item_id):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{item_id} was not acknowledged within {timeout} s")
        time.sleep(0.0005)
    return time.perf_counter()


def _sample_worker(store: NexusStore[Note, str], i: int) -> float:
    """One CRITICAL save through the worker: ms from its commit to its op leaving the queue."""
    note = Note(id=f"w{i:05d}", text="x" * 100, n=i)
    store.save(note, priority=SyncPriority.CRITICAL)
    committed = time.perf_counter()
    return (_wait_acked(store, note.id) - committed) * 1000


def _measure_latency(
    store: NexusStore[Note, str], folder: Path, server: ServerProcess, saves: int
) -> tuple[list[float], list[float]]:
    """The worker's and the in-process figure, one save of each in turn (so that both
    see the same machine: a load that comes and goes weighs on both alike)."""

    async def main() -> tuple[list[float], list[float]]:
        worker: list[float] = []
        direct: list[float] = []
        own: NexusStore[Note, str] = NexusStore(folder / "direct.db", model=Note)
        async with HttpBackend(server.base_url, token="bench-direct", timeout=10) as backend:
            for i in range(saves + 5):
                note = Note(id=f"d{i:05d}", text="x" * 100, n=i)
                own.save(note, priority=SyncPriority.CRITICAL)
                committed = time.perf_counter()
                await SyncRunner(own, backend, pull=False).run()
                took = (time.perf_counter() - committed) * 1000
                await anyio.sleep(0.05)  # the worker idle again, its last run long over
                through = await anyio.to_thread.run_sync(_sample_worker, store, i)
                if i >= 5:  # the first few warm connections and caches
                    direct.append(took)
                    worker.append(through)
                await anyio.sleep(0.05)
        own.close()
        return worker, direct

    return anyio.run(main)


def _measure_pokes(folder: Path, server: ServerProcess, saves: int) -> list[float]:
    from datetime import timedelta  # noqa: PLC0415

    from ..sync import BackgroundSyncConfig, WorkManagerSyncService  # noqa: PLC0415
    from ..sync.device import SimulatedDevice  # noqa: PLC0415

    async def main() -> list[float]:
        config = BackgroundSyncConfig(min_interval=timedelta(minutes=15))
        latencies = []
        async with (
            HttpBackend(server.base_url, token="bench-poke-a", timeout=10) as backend_a,
            HttpBackend(server.base_url, token="bench-poke-b", timeout=10) as backend_b,
        ):
            a: NexusStore[Note, str] = NexusStore(
                folder / "poke-a.db", model=Note, backend=backend_a, owns_backend=False
            )
            b: NexusStore[Note, str] = NexusStore(
                folder / "poke-b.db", model=Note, backend=backend_b, owns_backend=False
            )
            service_a = WorkManagerSyncService(a, config=config, device=SimulatedDevice())
            service_b = WorkManagerSyncService(b, config=config, device=SimulatedDevice())
            async with service_a, service_b:
                await service_a.schedule_sync()
                await service_b.schedule_sync()
                await anyio.sleep(1.0)  # both first runs over, B's stream open
                changes = b.watch()  # B's change stream: wakes as the pull commits
                for i in range(saves):
                    note = Note(id=f"p{i:05d}", text="x" * 100, n=i)
                    a.save(note, priority=SyncPriority.CRITICAL)
                    saved = time.perf_counter()
                    with anyio.fail_after(10):
                        async for _ in changes:
                            if b.get(note.id) is not None:
                                break
                    latencies.append((time.perf_counter() - saved) * 1000)
                    await anyio.sleep(0.05)
            a.close()
            b.close()
        return latencies

    return anyio.run(main)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    saves = 50 if quick else 200
    idle_window = 10.0 if quick else 60.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with ServerProcess(f"sqlite:///{folder}/server.db", tokens=TOKENS) as server:
            store: NexusStore[Note, str] = NexusStore(folder / "app.db", model=Note)
            store.save(Note(id="seed", text="", n=0))
            worker = _Worker(folder / "app.db", server)
            try:
                worker.wait_for("draining")
                _wait_acked(store, "seed", timeout=30)
                latencies, direct = _measure_latency(store, folder, server, saves)
                pokes = _measure_pokes(folder, server, 10 if quick else 30)
                time.sleep(2.0)  # let the last run end before the idle window
                worker_process = psutil.Process(worker.proc.pid)
                server_process = psutil.Process(server.pid)
                start = time.monotonic()
                worker_before = _cpu_seconds(worker_process)
                server_before = _cpu_seconds(server_process)
                time.sleep(idle_window)
                elapsed = time.monotonic() - start
                worker_cpu = (_cpu_seconds(worker_process) - worker_before) / elapsed * 100
                server_cpu = (_cpu_seconds(server_process) - server_before) / elapsed * 100
            finally:
                worker.stop()
                store.close()
    median = statistics.median(latencies)
    direct_median = statistics.median(direct)
    return {
        "saves": saves,
        "latency_ms": {
            "median": round(median, 2),
            "p99": round(_percentile(latencies, 0.99), 2),
            "min": round(min(latencies), 2),
            "max": round(max(latencies), 2),
        },
        "direct_latency_ms": {
            "median": round(direct_median, 2),
            "p99": round(_percentile(direct, 0.99), 2),
        },
        "worker_over_direct": round(median / direct_median, 2),
        "poke_latency_ms": {
            "saves": len(pokes),
            "median": round(statistics.median(pokes), 2),
            "p99": round(_percentile(pokes, 0.99), 2),
            "max": round(max(pokes), 2),
        },
        "poke_target_met": statistics.median(pokes) <= 1000.0,
        "idle_window_s": round(elapsed, 1),
        "idle_worker_cpu_percent": round(worker_cpu, 3),
        "idle_server_cpu_percent": round(server_cpu, 3),
        "median_target_met": median <= 2 * direct_median,
        "idle_cpu_target_met": worker_cpu <= 0.1,
    }


def _report(results: dict[str, Any]) -> None:
    latency, direct = results["latency_ms"], results["direct_latency_ms"]
    print(f"CRITICAL save -> server ack through the worker process, {results['saves']} saves:")
    print(
        f"  median {latency['median']:.1f} ms, p99 {latency['p99']:.1f} ms "
        f"(min {latency['min']:.1f}, max {latency['max']:.1f}); target median <= 2x in-process: "
        f"{'met' if results['median_target_met'] else 'NOT met'}"
    )
    print(
        f"  baseline, in-process sync run after the save: median {direct['median']:.1f} ms, "
        f"p99 {direct['p99']:.1f} ms; worker/in-process = {results['worker_over_direct']:.2f}x"
    )
    print(f"idle CPU over {results['idle_window_s']:.0f} s (share of one core):")
    print(
        f"  worker {results['idle_worker_cpu_percent']:.3f} % (target <= 0.1 %: "
        f"{'met' if results['idle_cpu_target_met'] else 'NOT met'}); "
        f"idle server {results['idle_server_cpu_percent']:.3f} % for reference"
    )


def _report_pokes(results: dict[str, Any]) -> None:
    pokes = results["poke_latency_ms"]
    print(f"save on device A -> in device B's store (pokes), {pokes['saves']} saves:")
    print(
        f"  median {pokes['median']:.1f} ms, p99 {pokes['p99']:.1f} ms, max {pokes['max']:.1f} "
        f"ms; target median <= 1 s: {'met' if results['poke_target_met'] else 'NOT met'}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    print("nexus-store worker benchmark" + (" (quick)" if args.quick else ""))
    results = run(args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _report(results)
        _report_pokes(results)


if __name__ == "__main__":
    main()
