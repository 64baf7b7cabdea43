"""Run a sync load: client processes started, synchronised, watched, and their counts merged.

:func:`run_load` starts the client processes (:mod:`._loadclient`; one per CPU unless
``processes`` says otherwise, never more than one per client), gives them their clients
and waits until every store is open, starts them all at one moment, reports progress,
samples the server processes it was told about (RSS, CPU), collects the counts, has the
server's items counted (:mod:`._verify`) and merges everything (:mod:`._syncresult`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from .._exceptions import NexusStoreError
from ._plan import LoadConfig
from ._syncresult import merge_results
from ._verify import ItemCounter, decode_bitmaps

__all__ = ["BenchRunError", "Snapshot", "new_collection", "run_load"]

_READY_TIMEOUT = 120.0


class BenchRunError(NexusStoreError, RuntimeError):
    """A client process failed (its last lines are in the message)."""


@dataclass(frozen=True)
class Snapshot:
    """Progress of a run, for the terminal."""

    t: float
    """Seconds since the load started (negative while the clients get ready)."""
    phase: str
    """``"starting"``, ``"warm-up"``, ``"load"`` or ``"drain"``."""
    saved: int
    acked: int
    errors: int
    live: int
    drained: int
    clients: int


def new_collection() -> str:
    """A collection name no earlier run used."""
    return f"bench_{uuid.uuid4().hex[:12]}"


class _ClientProcess:
    """One client process and the lines it prints."""

    def __init__(self, orders: dict[str, Any], log: IO[str]) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_store.bench._loadclient"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.progress: dict[str, Any] = {}
        self.result: dict[str, Any] | None = None
        self._send(orders)
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                with contextlib.suppress(ValueError):
                    self.lines.put(json.loads(line))
        self.lines.put(None)

    def go(self, start: float) -> None:
        self._send({"start": start})
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def take(self, timeout: float) -> dict[str, Any] | None:
        """The next message (``{}`` when none came in time, ``None`` at the end)."""
        try:
            message = self.lines.get(timeout=timeout)
        except queue.Empty:
            return {}
        if message is not None:
            if message.get("type") == "progress":
                self.progress = message
            elif message.get("type") == "result":
                self.result = message
        return message

    def tail(self) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-3:]) or f"exit code {self.proc.poll()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._pump.join(10)


class _ServerSampler:
    """RSS and CPU of the server processes (when they run on this machine), and the CPU of
    the database server under them (a PostgreSQL started here: its main process and the
    backends it forks, which come and go with connections)."""

    def __init__(self, pids: Sequence[int], database_pid: int | None = None) -> None:
        self.processes: list[psutil.Process] = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.processes.append(psutil.Process(pid))
        self.rss_peak = [0.0] * len(self.processes)
        self.rss_total_peak = 0.0
        self._cpu_before: list[float] | None = None
        self._wall_before = 0.0
        self.cpu: list[float] = []
        self.load_average: float | None = None
        self._database: psutil.Process | None = None
        if database_pid is not None:
            with contextlib.suppress(psutil.Error):
                self._database = psutil.Process(database_pid)
        self._database_before: dict[int, float] = {}
        self.database_cpu: float | None = None

    def _database_cpu(self) -> dict[int, float]:
        """CPU seconds of the database server's processes, by pid."""
        if self._database is None:
            return {}
        out: dict[int, float] = {}
        with contextlib.suppress(psutil.Error):
            for p in [self._database, *self._database.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    out[p.pid] = times.user + times.system
        return out

    def _cpu(self) -> list[float]:
        out = []
        for p in self.processes:
            try:
                times = p.cpu_times()
                out.append(times.user + times.system)
            except psutil.Error:
                out.append(float("nan"))
        return out

    def sample(self) -> None:
        total = 0.0
        for i, p in enumerate(self.processes):
            with contextlib.suppress(psutil.Error):
                rss = p.memory_info().rss / 2**20
                self.rss_peak[i] = max(self.rss_peak[i], rss)
                total += rss
        self.rss_total_peak = max(self.rss_total_peak, total)

    def window_start(self) -> None:
        self._database_before = self._database_cpu()
        self._cpu_before, self._wall_before = self._cpu(), time.perf_counter()

    def window_end(self) -> None:
        if self._cpu_before is None:
            return
        seconds = max(1e-9, time.perf_counter() - self._wall_before)
        after = self._cpu()
        self.cpu = [100 * (b - a) / seconds for a, b in zip(self._cpu_before, after, strict=True)]
        with contextlib.suppress(OSError):
            self.load_average = os.getloadavg()[0]
        if self._database is not None:
            # A backend forked during the window counts from 0; one that ended is missed.
            spent = self._database_cpu()
            used = sum(t - self._database_before.get(pid, 0.0) for pid, t in spent.items())
            self.database_cpu = 100 * used / seconds

    def to_json(self) -> dict[str, Any] | None:
        if not self.processes:
            return None
        out: dict[str, Any] = {
            "processes": len(self.processes),
            "rss_peak_mib": [round(r, 1) for r in self.rss_peak],
            "rss_total_peak_mib": round(self.rss_total_peak, 1),
            "cpu_percent_of_core": [round(c, 1) for c in self.cpu],
        }
        if self.database_cpu is not None:
            out["database_cpu_percent_of_core"] = round(self.database_cpu, 1)
        return out


def _split(config: LoadConfig, processes: int) -> list[list[tuple[int, str]]]:
    shares: list[list[tuple[int, str]]] = [[] for _ in range(processes)]
    for client in range(config.clients):
        shares[client % processes].append((client, config.urls[client % len(config.urls)]))
    return shares


def process_count(config: LoadConfig) -> int:
    """Client processes for ``config``: as asked, else one per CPU, at most one per client."""
    wanted = config.processes or (os.cpu_count() or 1)
    return max(1, min(config.clients, wanted))


def run_load(
    config: LoadConfig,
    token: str | None,
    *,
    collection: str,
    counter: ItemCounter | None = None,
    server_pids: Sequence[int] = (),
    database_pid: int | None = None,
    progress: Callable[[Snapshot], None] | None = None,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Run one load and return its merged figures (see :mod:`._syncresult`).

    Args:
        config: the run.
        token: the bearer token the clients send.
        collection: the collection the clients write (a fresh one per run).
        counter: counts the run's items on the server afterwards (``None``: not counted).
        server_pids: server processes on this machine to sample (RSS, CPU).
        database_pid: the main process of a database server on this machine under them
            (its CPU, with the processes it forks).
        progress: called about twice a second.
        folder: where the clients' store files go (a temporary folder by default; removed
            afterwards either way).

    Raises:
        BenchRunError: a client process failed or did not get ready.
    """
    processes = process_count(config)
    sampler = _ServerSampler(server_pids, database_pid)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-clients-", dir=folder) as tmp:
        logs = [
            tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below
                "w+", dir=tmp, prefix=f"client-process-{i}-", suffix=".log", delete=False
            )
            for i in range(processes)
        ]
        children: list[_ClientProcess] = []
        try:
            for index, share in enumerate(_split(config, processes)):
                orders = {
                    "index": index,
                    "clients": share,
                    "folder": str(Path(tmp) / f"p{index}"),
                    "token": token,
                    "collection": collection,
                    "batch": config.batch,
                    "payload_bytes": config.payload_bytes,
                    "warmup": config.warmup,
                    "duration": config.duration,
                    "ops": config.ops,
                    "interval": config.interval,
                    "total_clients": config.clients,
                    "mix": list(config.mix),
                    "timeout": config.timeout,
                    "drain_timeout": config.drain_timeout,
                    "critical_every": config.critical_every,
                    "allow_insecure_http": config.allow_insecure_http,
                    "client_durability": config.client_durability,
                }
                children.append(_ClientProcess(orders, logs[index]))
            _wait_ready(children, config, progress)
            start = time.time() + 0.5
            for child in children:
                child.go(start)
            _watch(children, config, start, sampler, progress)
            results = [child.result for child in children]
            failed = [c for c in children if c.result is None]
            if failed:
                raise BenchRunError(f"a client process failed: {failed[0].tail()}")
        finally:
            for child in children:
                child.stop()
            for log in logs:
                log.close()
    done = [r for r in results if r is not None]
    verification = None
    if counter is not None:
        verification = counter(collection, decode_bitmaps(r["acked"] for r in done))
    return merge_results(
        config,
        done,
        processes=processes,
        server=sampler.to_json(),
        verification=verification,
        collection=collection,
        load_average=sampler.load_average,
    )


def _wait_ready(
    children: list[_ClientProcess],
    config: LoadConfig,
    progress: Callable[[Snapshot], None] | None,
) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT + 0.2 * config.clients
    waiting = set(range(len(children)))
    while waiting:
        if time.monotonic() > deadline:
            raise BenchRunError("the client processes did not get ready in time")
        for i in list(waiting):
            message = children[i].take(0.05)
            if message is None:
                raise BenchRunError(f"a client process failed: {children[i].tail()}")
            if message.get("type") == "ready":
                waiting.discard(i)
        if progress is not None:
            progress(Snapshot(-1.0, "starting", 0, 0, 0, 0, 0, config.clients))


def _watch(
    children: list[_ClientProcess],
    config: LoadConfig,
    start: float,
    sampler: _ServerSampler,
    progress: Callable[[Snapshot], None] | None,
) -> None:
    window = (start + config.warmup, start + config.warmup + config.duration)
    deadline = window[1] + config.drain_timeout + 120.0
    running = set(range(len(children)))
    in_window = False
    last_report = 0.0
    while running and time.time() < deadline:
        for i in list(running):
            while True:
                message = children[i].take(0.0 if len(running) > 1 else 0.1)
                if message is None:
                    running.discard(i)
                    break
                if not message:
                    break
        now = time.time()
        if not in_window and now >= window[0]:
            sampler.window_start()
            in_window = True
        if in_window and now >= window[1] and not sampler.cpu:
            sampler.window_end()
        if now - last_report >= 0.5:
            last_report = now
            sampler.sample()
            if progress is not None:
                progress(_snapshot(children, config, start, now, window))
        time.sleep(0.05)
    if in_window and not sampler.cpu:
        sampler.window_end()


def _snapshot(
    children: list[_ClientProcess],
    config: LoadConfig,
    start: float,
    now: float,
    window: tuple[float, float],
) -> Snapshot:
    parts = [c.progress for c in children]
    t = now - start
    phase = "warm-up" if now < window[0] else "load" if now < window[1] else "drain"
    return Snapshot(
        t=t,
        phase=phase,
        saved=sum(p.get("saved", 0) for p in parts),
        acked=sum(p.get("acked", 0) for p in parts),
        errors=sum(p.get("errors", 0) for p in parts),
        live=sum(p.get("live", 0) for p in parts),
        drained=sum(p.get("drained", 0) for p in parts),
        clients=config.clients,
    )
