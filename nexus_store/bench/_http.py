"""HTTP sync benchmark: ``HttpBackend`` -> ``nexus-store serve`` vs a bare pipeline.

Run: ``nexus-store bench --only http [--quick]``, or ``python -m
nexus_store.bench._http [--quick] [--pull-only]`` (from a checkout also
``python benchmarks/bench_http.py``), or import and call ``run(quick)`` (``run_pull(quick)``:
the pull figures alone).

Printed from one run, every server a subprocess on 127.0.0.1 under the same uvicorn
settings (:func:`nexus_store.server._run.serve_app` on a socket from
:func:`~nexus_store.server._run.bind_socket`):

1. Push of 20,000 ops of about 200 bytes through :class:`HttpBackend` to
   ``nexus-store serve`` on SQLite (WAL, ``synchronous=FULL``), in batches of 100 and of
   500, against the **bare pipeline**: a minimal Starlette route that unpacks the msgpack
   body and upserts the items in one SQLite transaction (WAL, ``synchronous=FULL``),
   called by a plain ``httpx.AsyncClient`` with pre-built dicts. Target: ours/bare >= 0.8
   at batch 500.
   On SQLite the run also prints the **floor**: the same bare route and client, writing
   per op only the rows our server's schema must hold (the item with its version, in the
   table indexed by key and by version, and the op id's idempotency record), with no
   reads, no conflict check and no canonical form. No server keeping those rows can beat
   that figure, so it bounds what the ratio above can reach with this schema.
2. The same on PostgreSQL storage (a ``pgserver`` PostgreSQL), against the bare
   pipeline writing to the same PostgreSQL with psycopg, and its floor: the bare route
   writing our tables there, as our storage writes them (binary arrays, one statement
   per table).
3. Pull of 20,000 changes (pages of 500 and 5,000) through :class:`HttpBackend`, against a
   bare route reading pages by rowid (reported).

Ours and bare alternate in rounds (each on a fresh tenant or table) so that disk and CPU
noise hits both alike; each figure is the median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgpack

from ..backends import HttpBackend, RemoteOp
from ..testing import ServerProcess, TemporaryPostgres
from ._bare import _TLS, BareProcess, bare_server_main, pull_bare, push_bare

__all__: list[str] = []

OPS = 20_000
TARGET = 0.8
"""The throughput targets' ratio: ours against the floor (push: SQLite at batches 500 and
100, PostgreSQL at batch 500) and against the bare route (pull, both page sizes)."""
Server = tuple[str, int]
"""A server's base URL and process id."""
TOKEN = "bench-token"


def op_id(millis: int) -> str:
    """A time-ordered op id, as a store's queue makes them (uuid version 7 layout)."""
    ms = f"{millis:012x}"
    rand = os.urandom(10).hex()
    return f"{ms[:8]}-{ms[8:]}-7{rand[:3]}-{'89ab'[int(rand[3], 16) & 3]}{rand[4:7]}-{rand[7:19]}"


def make_ops(n: int, run_id: str) -> list[RemoteOp]:
    """``n`` upserts of distinct items, about 200 bytes each on the wire.

    Op ids are time-ordered like the ones a store's queue makes (several per
    millisecond, as when a burst of saves is queued).
    """
    start = int(time.time() * 1000)
    return [
        RemoteOp(
            op_id=op_id(start + i // 16),
            collection="notes",
            item_id=f"{run_id}-{i:08d}",
            kind="upsert",
            data={
                "id": f"{run_id}-{i:08d}",
                "title": f"note number {i}",
                "body": "lorem ipsum dolor sit amet",
                "rank": i % 100,
                "done": i % 3 == 0,
            },
            hlc=f"{1_700_000_000_000 + i:013d}-00000-bench",
        )
        for i in range(n)
    ]


def op_size(op: RemoteOp) -> int:
    """Bytes of one op in a msgpack body."""
    return len(msgpack.packb(op.model_dump(mode="json")))


async def push_ours(base_url: str, ops: list[RemoteOp], batch: int) -> float:
    """Ops per second pushing ``ops`` through HttpBackend in batches of ``batch``."""
    async with HttpBackend(base_url, token=TOKEN, verify=_TLS) as remote:
        await remote.pull(0, 1)  # connect outside the timing
        start = time.perf_counter()
        for i in range(0, len(ops), batch):
            result = await remote.push(ops[i : i + batch])
            assert result.results[-1].status.value == "accepted"
        return len(ops) / (time.perf_counter() - start)


async def pull_ours(base_url: str, limit: int, expected: int) -> float:
    """Changes per second pulling everything through HttpBackend, ``limit`` per page."""
    async with HttpBackend(base_url, token=TOKEN, verify=_TLS) as remote:
        await remote.pull(0, 1)
        start = time.perf_counter()
        cursor, total = 0, 0
        while True:
            page = await remote.pull(cursor, limit)
            total += len(page.changes)
            cursor = page.cursor
            if not page.has_more:
                break
        elapsed = time.perf_counter() - start
    assert total == expected, (total, expected)
    return total / elapsed


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by process ``pid`` (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Side = tuple[Callable[[int], Awaitable[float]], int]
"""A measurement (round -> items per second) and the pid of the server it talks to."""


def _alternate(rounds: int, items: int, sides: dict[str, Side]) -> dict[str, dict[str, float]]:
    """Run each side once per round, alternating; keep the medians of rate and CPU per item.

    CPU time is counted per process (the server's, and this client process's), so it
    shows where the work is even when other load on the machine stretches wall time.
    """
    rates: dict[str, list[float]] = {name: [] for name in sides}
    server_cpu: dict[str, list[float]] = {name: [] for name in sides}
    client_cpu: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name, (measure, pid) in sides.items():
            server_before, client_before = _process_cpu(pid), _own_cpu()
            rates[name].append(anyio.run(measure, r))
            server_cpu[name].append((_process_cpu(pid) - server_before) / items * 1e6)
            client_cpu[name].append((_own_cpu() - client_before) / items * 1e6)
    return {
        name: {
            "rate": _median(rates[name]),
            "server_cpu_us": _median(server_cpu[name]),
            "client_cpu_us": _median(client_cpu[name]),
        }
        for name in sides
    }


def _figures(measured: dict[str, dict[str, float]], unit: str) -> dict[str, Any]:
    ours, bare = measured["ours"], measured["bare"]
    return {
        f"ours_{unit}_per_s": round(ours["rate"]),
        f"bare_{unit}_per_s": round(bare["rate"]),
        "ratio": round(ours["rate"] / bare["rate"], 3),
        "ours_server_cpu_us_per_item": round(ours["server_cpu_us"], 1),
        "bare_server_cpu_us_per_item": round(bare["server_cpu_us"], 1),
        "ours_client_cpu_us_per_item": round(ours["client_cpu_us"], 1),
        "bare_client_cpu_us_per_item": round(bare["client_cpu_us"], 1),
    }


def bench_push(
    ours: Server, bare: Server, *, ops: int, rounds: int, tag: str, floor: bool = False
) -> dict[str, Any]:
    """Push figures at batch 100 and 500 for one storage (``floor``: also the bare route
    writing our server's tables)."""
    out: dict[str, Any] = {}
    for batch in (100, 500):
        workloads = [make_ops(ops, f"{tag}{batch}r{r}") for r in range(rounds)]
        dicts = [[op.model_dump(mode="json") for op in w] for w in workloads]

        async def push_with_ours(
            r: int, batch: int = batch, workloads: list[list[RemoteOp]] = workloads
        ) -> float:
            return await push_ours(ours[0], workloads[r], batch)

        async def push_with_bare(
            r: int, batch: int = batch, dicts: list[list[dict[str, Any]]] = dicts
        ) -> float:
            return await push_bare(bare[0], dicts[r], batch)

        async def push_with_floor(
            r: int, batch: int = batch, dicts: list[list[dict[str, Any]]] = dicts
        ) -> float:
            return await push_bare(bare[0], dicts[r], batch, route="/push-floor")

        sides: dict[str, Side] = {
            "ours": (push_with_ours, ours[1]),
            "bare": (push_with_bare, bare[1]),
        }
        if floor:
            sides["floor"] = (push_with_floor, bare[1])
        measured = _alternate(rounds, ops, sides)
        out[f"batch_{batch}"] = figures = _figures(measured, "ops")
        if floor:
            figures["floor_ops_per_s"] = round(measured["floor"]["rate"])
            figures["floor_ratio"] = round(measured["floor"]["rate"] / measured["bare"]["rate"], 3)
            figures["ours_floor_ratio"] = round(
                measured["ours"]["rate"] / measured["floor"]["rate"], 3
            )
    return out


def bench_pull(ours: Server, bare: Server, *, total: int, rounds: int) -> dict[str, Any]:
    """Pull figures (pages of 500 and 5,000) over everything pushed so far."""
    out: dict[str, Any] = {"changes": total}
    for limit in (500, 5000):

        async def pull_with_ours(r: int, limit: int = limit) -> float:
            return await pull_ours(ours[0], limit, total)

        async def pull_with_bare(r: int, limit: int = limit) -> float:
            return await pull_bare(bare[0], limit, total)

        measured = _alternate(
            rounds, total, {"ours": (pull_with_ours, ours[1]), "bare": (pull_with_bare, bare[1])}
        )
        out[f"page_{limit}"] = _figures(measured, "changes")
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Run every figure and return them (``quick``: fewer ops and rounds, same shape)."""
    ops = 4_000 if quick else OPS
    rounds = 1 if quick else 3
    results: dict[str, Any] = {"ops": ops, "op_bytes": op_size(make_ops(1, "size")[0])}
    tokens = {TOKEN: "bench"}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-http-") as name:
        tmp = Path(name)
        with (
            ServerProcess(f"sqlite:///{tmp}/ours.db", tokens=tokens, max_batch=500) as ours,
            BareProcess(str(tmp / "bare.db")) as bare,
        ):
            servers = (ours.base_url, ours.pid), (bare.base_url, bare.pid)
            results["sqlite_push"] = bench_push(
                *servers, ops=ops, rounds=rounds, tag="s", floor=True
            )
            pushed = ops * 2 * rounds
            results["sqlite_pull"] = bench_pull(*servers, total=pushed, rounds=rounds)
        with TemporaryPostgres() as postgres:
            ours_dsn = postgres.create_database("bench_ours")
            bare_dsn = postgres.create_database("bench_bare")
            with (
                ServerProcess(ours_dsn, tokens=tokens, max_batch=500) as ours,
                BareProcess(bare_dsn) as bare,
            ):
                servers = (ours.base_url, ours.pid), (bare.base_url, bare.pid)
                results["postgres_push"] = bench_push(
                    *servers, ops=ops, rounds=rounds, tag="p", floor=True
                )
    return results


def run_pull(quick: bool = False) -> dict[str, Any]:
    """Only the pull figures (SQLite), over as many changes as :func:`run` pulls: both
    servers are filled first, untimed, by pushes in batches of 500."""
    ops = 4_000 if quick else OPS
    rounds = 1 if quick else 3
    total = ops * 2 * rounds
    results: dict[str, Any] = {"ops": ops, "op_bytes": op_size(make_ops(1, "size")[0])}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-http-") as name:
        tmp = Path(name)
        with (
            ServerProcess(
                f"sqlite:///{tmp}/ours.db", tokens={TOKEN: "bench"}, max_batch=500
            ) as ours,
            BareProcess(str(tmp / "bare.db")) as bare,
        ):
            workload = make_ops(total, "fill")
            anyio.run(push_ours, ours.base_url, workload, 500)
            anyio.run(
                push_bare, bare.base_url, [op.model_dump(mode="json") for op in workload], 500
            )
            del workload  # as in run(): the pushed ops are not alive while pulling
            servers = (ours.base_url, ours.pid), (bare.base_url, bare.pid)
            results["sqlite_pull"] = bench_pull(*servers, total=total, rounds=rounds)
    return results


def _verdict(ratio: float) -> str:
    return f"(target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'})"


def _has_target(label: str) -> bool:
    """Whether the row's ratio has a target: every pull, push on SQLite at both batch sizes
    (against its floor), push on PostgreSQL at batch 500 (against its floor)."""
    return label.startswith(("pull", "push sqlite")) or label == "push postgres batch_500"


def _report(results: dict[str, Any]) -> None:
    """Print every figure; each ratio with a target says whether it is met."""
    for line in report_lines(results):
        print(line)


def report_lines(results: dict[str, Any]) -> list[str]:
    """The report's lines (see :func:`_report`)."""
    lines = [
        f"{results['ops']:,} ops per measurement, {results['op_bytes']} bytes each (msgpack)",
        "CPU: microseconds per op (push) or change (pull), in the server and in the client",
    ]
    rows = [
        (f"push {storage} {batch}", figure, "ops")
        for storage in ("sqlite", "postgres")
        for batch, figure in results.get(f"{storage}_push", {}).items()
    ]
    rows += [
        (f"pull sqlite {page}", figure, "changes")
        for page, figure in results["sqlite_pull"].items()
        if page.startswith("page_")
    ]
    for label, figure, unit in rows:
        # A ratio judged against its target shows the digit the verdict turns on.
        pull = label.startswith("pull")
        ratio = (
            f"{figure['ratio']:.3f}  {_verdict(figure['ratio'])}"
            if pull
            else (f"{figure['ratio']:.2f}")
        )
        lines.append(
            f"{label:<24} ours {figure[f'ours_{unit}_per_s']:>7,}/s  "
            f"bare {figure[f'bare_{unit}_per_s']:>7,}/s  ratio {ratio}"
        )
        lines.append(
            f"{'':<24} CPU server ours {figure['ours_server_cpu_us_per_item']:>5.1f} "
            f"bare {figure['bare_server_cpu_us_per_item']:>5.1f}; client ours "
            f"{figure['ours_client_cpu_us_per_item']:>5.1f} "
            f"bare {figure['bare_client_cpu_us_per_item']:>5.1f}"
        )
        if "floor_ratio" in figure:
            lines.append(
                f"{'':<24} floor (the bare route writing our tables) "
                f"{figure['floor_ops_per_s']:>7,}/s  ratio {figure['floor_ratio']:.2f}"
            )
            floor = figure["ours_floor_ratio"]
            judged = f"{floor:.3f}  {_verdict(floor)}" if _has_target(label) else f"{floor:.2f}"
            lines.append(f"{'':<24} ours / floor {judged}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--pull-only", action="store_true", help="only the pull figures")
    parser.add_argument("--bare-server", metavar="DATABASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server:
        bare_server_main(args.bare_server)
        return
    print("nexus-store HTTP sync benchmark" + (" (quick)" if args.quick else ""))
    results = run_pull(args.quick) if args.pull_only else run(args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _report(results)


if __name__ == "__main__":
    main()
