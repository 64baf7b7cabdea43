"""Drain benchmark: queued saves → sync run → HttpBackend → ``nexus-store serve`` (SQLite).

Run: ``nexus-store bench --only drain [--quick]``, or ``python -m
nexus_store.bench._drain [--quick]`` (from a checkout also
``python benchmarks/bench_drain.py``), or import and call ``run(quick)``.

Printed from one run:

1. Drain of 100,000 queued saves (about 200 bytes each, the workload of
   ``bench_http.py``) from a store file (WAL, ``synchronous=FULL``) by one
   :class:`~nexus_store.sync.engine.SyncRunner` run (batches of 500, push only) through
   :class:`~nexus_store.backends.HttpBackend` to ``nexus-store serve`` on SQLite, in ops/s,
   and as a ratio to the **bare pipeline** of ``bench_http.py`` (a minimal Starlette route
   that unpacks msgpack and upserts in one SQLite transaction, fed pre-built dicts by
   httpx) pushing as many ops in the same run. The bare figure is the mean of a
   measurement before and one after the drain. Also printed: the drain against
   ``HttpBackend`` alone pushing pre-built ops to the same server (the ceiling the server
   sets; what is left is the sync engine's own cost). The throughput target on this ratio
   is measured the way users run a drain, by ``store_sync`` (``store.sync()``).
2. The same drain with 1,000,000 queued ops, with the peak RSS of the draining process.
   Target: memory bounded, i.e. a peak RSS at most :data:`RSS_BOUND_MIB` above the
   100,000-op drain's.

The drain runs in a child process, so its peak RSS is its own; the bare client runs in
this process. ``--quick`` drains 10,000 and 100,000 ops instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from .._priority import SyncPriority
from .._store import NexusStore
from ..backends import HttpBackend
from ..sync.engine._runner import SyncRunner
from ..testing import ServerProcess
from ._bare import BareProcess, push_bare
from ._child import child_figures
from ._http import make_ops, push_ours

TOKEN = "bench-token"
BATCH = 500


class Note(BaseModel):
    """The item of ``bench_http.make_ops``: about 200 bytes as msgpack with its op."""

    id: str
    title: str
    body: str
    rank: int
    done: bool


def build_store(path: Path, count: int) -> float:
    """Queue ``count`` saves (1,000 per transaction, mixed priorities); return seconds."""
    store: NexusStore[Note, str] = NexusStore(path, model=Note)
    run_id = uuid.uuid4().hex[:8]
    start = time.perf_counter()
    try:
        for first in range(0, count, 1000):
            notes = [
                Note(
                    id=f"{run_id}-{i:08d}",
                    title=f"note number {i}",
                    body="lorem ipsum dolor sit amet",
                    rank=i % 100,
                    done=i % 3 == 0,
                )
                for i in range(first, min(count, first + 1000))
            ]
            store.save_many(notes, priority=SyncPriority(first // 1000 % 4))
    finally:
        store.close()
    return time.perf_counter() - start


def _peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB.

    Linux's ``VmHWM`` belongs to the process image, so it starts afresh at ``exec``;
    ``ru_maxrss`` would also count the parent's memory, inherited at ``fork``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def drain_child(path: str, url: str) -> None:
    """Drain the store at ``path`` in one run; print the figures as JSON (child process)."""
    store: NexusStore[Note, str] = NexusStore(path, model=Note)
    queued = store.queue.stats().live

    async def drain() -> dict[str, Any]:
        async with HttpBackend(url, token=TOKEN) as remote:
            await remote.pull(0, 1)  # connect outside the timing
            before = _peak_rss_mib()
            start = time.perf_counter()
            summary = await SyncRunner(store, remote, batch_size=BATCH, pull=False).run()
            seconds = time.perf_counter() - start
        return {
            "queued": queued,
            "pushed": summary.pushed,
            "left": store.queue.stats().live,
            "seconds": seconds,
            "ops_per_s": summary.pushed / seconds,
            "rss_before_mib": before,
            "peak_rss_mib": _peak_rss_mib(),
        }

    try:
        print(json.dumps(anyio.run(drain)))
    finally:
        store.close()


def drain(path: Path, url: str, *, module: str = "nexus_store.bench._drain") -> dict[str, Any]:
    """Run ``module``'s drain child (``--drain-child DB URL``: :func:`drain_child` here) in a
    fresh process, as an app would have it, and return its figures.

    Raises:
        RuntimeError: the child failed, or did not deliver every queued op.
    """
    figures = child_figures(module, "--drain-child", str(path), url, what="drain")
    if figures["left"] or figures["pushed"] != figures["queued"]:
        raise RuntimeError(f"the drain did not deliver everything: {figures}")
    return figures


def bare(url: str, count: int) -> float:
    """Ops per second of the bare pipeline pushing ``count`` fresh ops in batches of 500."""
    ops = [op.model_dump(mode="json") for op in make_ops(count, uuid.uuid4().hex[:8])]
    return float(anyio.run(push_bare, url, ops, BATCH))


def push_only(url: str, count: int) -> float:
    """Ops per second of HttpBackend alone pushing ``count`` pre-built ops to our server."""
    return float(anyio.run(push_ours, url, make_ops(count, uuid.uuid4().hex[:8]), BATCH))


def run(quick: bool = False) -> dict[str, Any]:
    """Measure everything; return the figures (``quick``: 10,000 and 100,000 ops)."""
    small, large = (10_000, 100_000) if quick else (100_000, 1_000_000)
    results: dict[str, Any] = {"batch": BATCH}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-drain-") as name:
        tmp = Path(name)
        small_db, large_db = tmp / "small.db", tmp / "large.db"
        results["build_small_s"] = round(build_store(small_db, small), 1)
        with (
            ServerProcess(f"sqlite:///{tmp}/ours.db", tokens={TOKEN: "bench"}) as ours,
            BareProcess(str(tmp / "bare.db")) as bare_server,
        ):
            bare_before = bare(bare_server.base_url, small)
            push_before = push_only(ours.base_url, small)
            figures = drain(small_db, ours.base_url)
            push_after = push_only(ours.base_url, small)
            bare_after = bare(bare_server.base_url, small)
            bare_mean = (bare_before + bare_after) / 2
            push_mean = (push_before + push_after) / 2
            results["small"] = {
                **_rounded(figures),
                "bare_ops_per_s": round(bare_mean),
                "bare_runs_ops_per_s": [round(bare_before), round(bare_after)],
                "ratio": round(figures["ops_per_s"] / bare_mean, 3),
                "push_only_ops_per_s": round(push_mean),
                "ratio_to_push_only": round(figures["ops_per_s"] / push_mean, 3),
            }
            small_db.unlink()
            results["build_large_s"] = round(build_store(large_db, large), 1)
            results["large"] = _rounded(drain(large_db, ours.base_url))
    return results


RSS_BOUND_MIB = 20.0
"""How much more the 1,000,000-op drain's peak RSS may be than the 100,000-op drain's."""


def _rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}


def _report(results: dict[str, Any]) -> None:
    for line in report_lines(results):
        print(line)


def report_lines(results: dict[str, Any]) -> list[str]:
    """The report's lines: each drain's figures; the large drain's memory with its verdict."""
    small, large = results["small"], results["large"]
    growth = large["peak_rss_mib"] - small["peak_rss_mib"]
    bounded = "met" if growth <= RSS_BOUND_MIB else "NOT met"
    return [
        f"drain {small['queued']:>9,} ops: {small['ops_per_s']:>8,.0f} ops/s "
        f"({small['seconds']:.1f} s), bare pipeline {small['bare_ops_per_s']:>8,} ops/s, "
        f"ratio {small['ratio']:.2f}; peak RSS {small['peak_rss_mib']:.0f} MiB "
        f"(before the run {small['rss_before_mib']:.0f} MiB)",
        f"  of which the server's share: HttpBackend alone pushing pre-built ops "
        f"{small['push_only_ops_per_s']:>8,} ops/s, so the drain runs at "
        f"{small['ratio_to_push_only']:.2f} of it",
        f"drain {large['queued']:>9,} ops: {large['ops_per_s']:>8,.0f} ops/s "
        f"({large['seconds']:.1f} s); peak RSS {large['peak_rss_mib']:.0f} MiB "
        f"(before the run {large['rss_before_mib']:.0f} MiB), {growth:+.1f} MiB on the "
        f"{small['queued']:,}-op drain's (memory bounded, target <= +{RSS_BOUND_MIB:.0f} MiB: "
        f"{bounded})",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--drain-child", nargs=2, metavar=("DB", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drain_child:
        drain_child(*args.drain_child)
        return
    print("nexus-store drain benchmark" + (" (quick)" if args.quick else ""))
    results = run(args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _report(results)


if __name__ == "__main__":
    main()
