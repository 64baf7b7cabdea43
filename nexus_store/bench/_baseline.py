"""The wire beside the load: our server, the bare pipeline and the floor, many connections.

``nexus-store bench server`` prints, beside the sync load, what the server itself can
take at the run's batch size with several connections pushing pre-built ops at once
(no stores, no queues: the server's share alone), and the same for

- the **bare pipeline** (:mod:`._bare`): a minimal Starlette route that unpacks the msgpack
  body and upserts the items in one transaction, under the same uvicorn settings;
- the **floor** (SQLite): the same route writing only the rows our server's schema must
  keep. No server keeping those rows can beat it.

The sides alternate in rounds (median of each), on fresh ops each time. The bare
pipeline runs on a storage of its own: a temporary SQLite file, or a database of the
benchmark's own PostgreSQL.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from ._bare import BareProcess, push_bare
from ._figures import Figure
from ._http import make_ops, push_ours
from ._servers import LocalServers

__all__ = ["baseline_figures", "wire_baselines"]

Pusher = Callable[[int], Coroutine[Any, Any, None]]


async def _concurrently(connections: int, push: Pusher) -> float:
    """Seconds for ``connections`` pushers to finish, all started at once."""
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for n in range(connections):
            group.start_soon(push, n)
    return time.perf_counter() - started


def wire_baselines(
    servers: LocalServers, *, batch: int, ops: int, connections: int, rounds: int
) -> dict[str, Any]:
    """Ops per second into ours, the bare pipeline and (SQLite) the floor; see the module.

    Returns:
        ``{"batch", "connections", "ops", "ours_ops_s", "bare_ops_s", "floor_ops_s"}``
        (``floor_ops_s`` is ``None`` where there is no floor route), or ``{"skipped":
        reason}`` when the bare pipeline cannot have a storage of its own.
    """
    per = max(batch, ops // connections)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-bare-") as tmp:
        bare_db = servers.scratch_database(tmp)
        if bare_db is None:
            return {
                "skipped": "the bare pipeline needs a database of its own (--database postgres)"
            }
        rates: dict[str, list[float]] = {"ours": [], "bare": [], "floor": []}
        with BareProcess(bare_db) as bare:
            for r in range(rounds):
                tag = uuid.uuid4().hex[:6]
                workloads = [make_ops(per, f"w{tag}{n}") for n in range(connections)]
                dicts = [[op.model_dump(mode="json") for op in w] for w in workloads]
                urls = servers.urls

                async def ours(n: int, urls: list[str] = urls, work: list[Any] = workloads) -> None:
                    await push_ours(urls[n % len(urls)], work[n], batch)

                async def plain(n: int, dicts: list[Any] = dicts) -> None:
                    await push_bare(bare.base_url, dicts[n], batch)

                async def floor(n: int, dicts: list[Any] = dicts) -> None:
                    await push_bare(bare.base_url, dicts[n], batch, route="/push-floor")

                sides: list[tuple[str, Pusher]] = [("ours", ours), ("bare", plain)]
                if servers.kind == "sqlite":
                    sides.append(("floor", floor))
                if r % 2:
                    sides.reverse()
                for name, push in sides:
                    seconds = anyio.run(_concurrently, connections, push)
                    rates[name].append(per * connections / seconds)
    return {
        "batch": batch,
        "connections": connections,
        "ops": per * connections,
        "rounds": rounds,
        "ours_ops_s": statistics.median(rates["ours"]),
        "bare_ops_s": statistics.median(rates["bare"]),
        "floor_ops_s": statistics.median(rates["floor"]) if rates["floor"] else None,
    }


def baseline_figures(results: dict[str, Any], label: str) -> list[Figure]:
    """The figures of :func:`wire_baselines`."""
    group = f"the server alone: {label}"
    if "skipped" in results:
        return [Figure("wire.skipped", group, "bare pipeline", None, note=results["skipped"])]
    how = f"batch {results['batch']}, {results['connections']} connections, pre-built ops"
    ours, bare, floor = results["ours_ops_s"], results["bare_ops_s"], results["floor_ops_s"]
    out = [
        Figure("wire.ours_ops_s", group, "nexus-store serve", ours, "ops/s", "higher", note=how),
        Figure(
            "wire.bare_ops_s",
            group,
            "bare pipeline",
            bare,
            "ops/s",
            "higher",
            note="a Starlette route upserting the batch",
        ),
        Figure("wire.ratio_bare", group, "ours / bare pipeline", ours / bare, "x", "higher"),
    ]
    if floor:
        out += [
            Figure(
                "wire.floor_ops_s",
                group,
                "floor",
                floor,
                "ops/s",
                "higher",
                note="the bare route writing only the rows our schema keeps",
            ),
            Figure("wire.ratio_floor", group, "ours / floor", ours / floor, "x", "higher"),
        ]
    else:
        out.append(
            Figure(
                "wire.floor_ops_s",
                group,
                "floor",
                None,
                "ops/s",
                note="no floor route on this storage",
            )
        )
    return out
