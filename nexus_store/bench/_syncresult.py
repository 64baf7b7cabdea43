"""The counts of every client process merged into one run's figures (pure functions).

:func:`merge_results` adds up what the client processes counted (:mod:`._recorder`),
keeps only the measured window for rates, latencies and errors, and builds the series the
charts draw; :func:`sync_figures` turns a merged run into :class:`~._figures.Figure` rows
with their targets (:class:`SyncTargets`).

Applied ops/s is the ops the server acknowledged in the measured window divided by its
length; the window is cut short where the last ack came earlier (a run bounded by
``--ops`` that ended before ``--duration``). Acks are bucketed per whole second.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._diagnose import CpuCost, RunShape, limits
from ._figures import Figure, Target
from ._plan import LoadConfig
from ._recorder import ERROR_KINDS
from ._stats import cdf, merge_counts, percentile, summary, timeline
from ._verify import Verification

__all__ = ["SyncTargets", "merge_results", "sync_figures"]


@dataclass(frozen=True)
class SyncTargets:
    """What a sync run must reach.

    Attributes:
        min_ops_s: applied ops/s at least this (``None``: no bound; an open loop must then
            apply 95 % of what it offered).
        max_push_p99_ms: push latency p99 below this.
        max_error_pct: failed requests below this percentage of all requests.
    """

    min_ops_s: float | None = None
    max_push_p99_ms: float = 500.0
    max_error_pct: float = 0.1


def _merge_pending(parts: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, int]]]:
    """Queued ops per priority, per second: the last sample of each process in each second."""
    per_second: dict[int, dict[int, dict[str, int]]] = {}
    for index, part in enumerate(parts):
        for t, counts in part.get("pending", []):
            second = max(0, math.floor(t))
            per_second.setdefault(second, {})[index] = counts
    out: list[tuple[int, dict[str, int]]] = []
    last: dict[int, dict[str, int]] = {}
    for second in sorted(per_second):
        last.update(per_second[second])
        total: dict[str, int] = {}
        for counts in last.values():
            for name, n in counts.items():
                total[name] = total.get(name, 0) + int(n)
        out.append((second, total))
    return out


def _rounded(values: dict[str, float]) -> dict[str, float | None]:
    return {k: None if math.isnan(v) else round(v, 3) for k, v in values.items()}


def merge_results(
    config: LoadConfig,
    parts: Sequence[dict[str, Any]],
    *,
    processes: int,
    server: dict[str, Any] | None,
    verification: Verification | None,
    collection: str,
    cpu_count: int | None = None,
    server_is_local: bool = False,
    load_average: float | None = None,
) -> dict[str, Any]:
    """One run's figures from the results of its client processes (``load_average``: the
    machine's 1-minute load average at the end of the measured window)."""
    acked_at = merge_counts(p["acked_at"] for p in parts)
    errors_at = merge_counts(p["errors_at"] for p in parts)
    seconds_with_acks = [int(s) for s, n in acked_at.items() if n]
    last = max(seconds_with_acks, default=-1)
    begin = config.warmup
    end = min(config.warmup + config.duration, float(last + 1))
    window_acks = sum(n for s, n in acked_at.items() if begin <= int(s) < end)
    applied = window_acks / (end - begin) if end > begin else math.nan
    saved_at = merge_counts(p.get("saved_at", {}) for p in parts)
    window_saves = sum(n for s, n in saved_at.items() if begin <= int(s) < end)
    errors = merge_counts(p["errors"] for p in parts)
    requests = sum(int(p["requests"]) for p in parts)
    failed = sum(errors.values())
    push = summary(x for p in parts for x in p["push_ms"])
    drains = [p.get("drain_s") for p in parts]
    undrained = sum(int(p.get("undrained_clients", 0)) for p in parts)
    lag = sorted(x for p in parts for x in p.get("lag_ms", []))
    late = sorted(x for p in parts for x in p.get("late_s", []))
    client_cpu = [float(p.get("cpu", {}).get("percent_of_core", math.nan)) for p in parts]
    server_cpu = list((server or {}).get("cpu_percent_of_core", []))
    interval = config.interval
    offered = None if config.rate is None else config.rate * config.mix[0] / sum(config.mix)
    shape = RunShape(
        offered_ops_s=offered,
        applied_ops_s=0.0 if math.isnan(applied) else applied,
        errors=errors,
        requests=requests,
        client_cpu=[c for c in client_cpu if not math.isnan(c)],
        loop_lag_p99_ms=0.0 if not lag else percentile(lag, 99),
        late_p99_s=0.0 if not late else percentile(late, 99),
        interval=interval,
        cpu_count=cpu_count or os.cpu_count() or 1,
        server_cpu=server_cpu,
        server_is_local=server_is_local or bool(server),
        database_cpu=float((server or {}).get("database_cpu_percent_of_core") or 0.0),
        load_average=load_average,
        saved_ops_s=window_saves / (end - begin) if end > begin else 0.0,
    )
    push_ms = [x for p in parts for x in p["push_ms"]]
    cost = CpuCost.of(shape)
    return {
        "clients": config.clients,
        "processes": processes,
        "batch": config.batch,
        "payload_bytes": config.payload_bytes,
        "mode": "closed" if config.closed_loop else "open",
        "mix": list(config.mix),
        "offered_ops_s": offered,
        "warmup_s": config.warmup,
        "duration_s": config.duration,
        "window_s": round(max(0.0, end - begin), 3),
        "collection": collection,
        "written": sum(int(p["written"]) for p in parts),
        "acked": sum(acked_at.values()),
        "acked_in_window": window_acks,
        "applied_ops_s": None if math.isnan(applied) else round(applied, 1),
        "push_ms": _rounded(push),
        "pull_ms": _rounded(summary(x for p in parts for x in p["pull_ms"])),
        "poke_ms": _rounded(summary(x for p in parts for x in p["poke_ms"])),
        "critical_ms": _rounded(summary(x for p in parts for x in p["critical_ms"])),
        "errors": {kind: errors.get(kind, 0) for kind in ERROR_KINDS},
        "requests": requests,
        "error_rate_pct": round(100 * failed / requests, 4) if requests else None,
        "ops_status": dict(merge_counts(p["ops_status"] for p in parts)),
        "drain_s": None
        if undrained or None in drains
        else round(max((float(d) for d in drains if d is not None), default=0.0), 2),
        "undrained_clients": undrained,
        "client_cpu_percent": client_cpu,
        "cpu_us_per_op": None if cost is None else _cost_json(cost),
        "cores_needed": None
        if cost is None or cost.server is None or not offered
        else round(cost.cores_for(offered), 2),
        "cpu_count": shape.cpu_count,
        "loop_lag_p99_ms": round(shape.loop_lag_p99_ms, 1),
        "late_p99_ms": round(shape.late_p99_s * 1000, 1),
        "skipped_actions": sum(int(p.get("skipped_actions", 0)) for p in parts),
        "missed_actions": sum(int(p.get("missed_actions", 0)) for p in parts),
        "server": server,
        "load_average": load_average,
        "verification": None if verification is None else verification.to_json(),
        "limits": limits(shape),
        "series": {
            "throughput": timeline({str(k): v for k, v in acked_at.items()}, max(last, 0)),
            "errors": timeline({str(k): v for k, v in errors_at.items()}, max(last, 0)),
            "pending": _merge_pending(parts),
            "push_cdf": cdf(push_ms),
        },
    }


def _cost_json(cost: CpuCost) -> dict[str, float | None]:
    return {
        "clients": round(cost.clients, 1),
        "server": None if cost.server is None else round(cost.server, 1),
        "database": None if cost.database is None else round(cost.database, 1),
    }


def _value(data: dict[str, Any], *path: str) -> float | None:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return float(node)


def sync_figures(
    run: dict[str, Any], targets: SyncTargets, *, key: str, group: str
) -> list[Figure]:
    """The figures of one merged run (see :func:`merge_results`)."""
    f: list[Figure] = []

    def add(name: str, label: str, value: float | None, unit: str, **more: Any) -> None:
        f.append(Figure(f"{key}.{name}", group, label, value, unit, **more))

    offered = run.get("offered_ops_s")
    keep_up = None
    if targets.min_ops_s is not None:
        keep_up = Target(">=", targets.min_ops_s)
    elif offered:
        keep_up = Target(">=", round(0.95 * offered, 1))
    if offered:
        add("offered_ops_s", "ops/s offered (open loop)", offered, "ops/s")
    note = f"acknowledged in the {run['window_s']:g} s window"
    if run.get("missed_actions"):
        note += f"; {run['missed_actions']:,} scheduled saves not made by the end"
    add(
        "applied_ops_s",
        "ops/s applied",
        run.get("applied_ops_s"),
        "ops/s",
        better="higher",
        target=keep_up,
        note=note,
    )
    for q in ("p50", "p95", "p99", "max"):
        add(
            f"push_{q}_ms",
            f"push latency {q}",
            _value(run, "push_ms", q),
            "ms",
            better="lower",
            target=Target("<", targets.max_push_p99_ms) if q == "p99" else None,
        )
    if run["pull_ms"].get("count"):
        for q in ("p50", "p99"):
            add(
                f"pull_{q}_ms", f"pull latency {q}", _value(run, "pull_ms", q), "ms", better="lower"
            )
    if run["poke_ms"].get("count"):
        add(
            "poke_p50_ms",
            "event stream, first event p50",
            _value(run, "poke_ms", "p50"),
            "ms",
            better="lower",
        )
    for q in ("p50", "p99", "max"):
        add(
            f"critical_{q}_ms",
            f"CRITICAL save to server ack {q}",
            _value(run, "critical_ms", q),
            "ms",
            better="lower",
        )
    add(
        "error_rate_pct",
        "failed requests",
        run.get("error_rate_pct"),
        "%",
        better="lower",
        target=Target("<", targets.max_error_pct),
        note=", ".join(f"{k}: {v}" for k, v in run["errors"].items() if v) or "none",
    )
    add(
        "drain_s",
        "time to drain after the load",
        run.get("drain_s"),
        "s",
        better="lower",
        note=""
        if run.get("drain_s") is not None
        else f"{run['undrained_clients']} clients did not drain",
    )
    verification = run.get("verification")
    if verification is not None:
        how = f"counted on the server ({verification['method']})"
        if not verification.get("complete", True):
            how += ", count stopped early"
        add("server_items", "items on the server", verification["server_items"], "", note=how)
        add(
            "lost",
            "acknowledged but not on the server",
            verification["lost"],
            "",
            better="lower",
            target=Target("==", 0),
            note=how,
        )
        # Through the sync API an item reads as its latest state: an op applied twice to
        # it is visible only in the server's own tables (``bench server`` reads them).
        by_pull = verification["method"] == "pull"
        add(
            "duplicated",
            "returned more than once" if by_pull else "applied more than once",
            verification["duplicated"],
            "",
            better="lower",
            target=Target("==", 0),
            note=how + (": items, not ops" if by_pull else ""),
        )
    server = run.get("server")
    if server:
        add(
            "server_rss_mib",
            "server RSS, peak",
            server.get("rss_total_peak_mib"),
            "MiB",
            better="lower",
            note=f"{server['processes']} process(es)",
        )
        cpu = server.get("cpu_percent_of_core") or []
        add(
            "server_cpu_pct",
            "server CPU",
            sum(cpu) if cpu else None,
            "% of a core",
            note="summed over processes",
        )
        if server.get("database_cpu_percent_of_core") is not None:
            add(
                "database_cpu_pct",
                "database server CPU",
                server["database_cpu_percent_of_core"],
                "% of a core",
                note="PostgreSQL, summed over its processes",
            )
    cpu = [c for c in run["client_cpu_percent"] if not math.isnan(c)]
    add(
        "client_cpu_pct",
        "busiest client process CPU",
        max(cpu, default=None),
        "% of a core",
        note=f"{run['processes']} client processes",
    )
    cost = run.get("cpu_us_per_op")
    if cost:
        add(
            "client_us_per_op",
            "client CPU per op",
            cost["clients"],
            "µs",
            better="lower",
            note="saving, leasing, pushing and acknowledging it; per op saved or applied, "
            "whichever were more",
        )
        if cost.get("server") is not None:
            add(
                "server_us_per_op",
                "server CPU per op applied",
                cost["server"],
                "µs",
                better="lower",
            )
        if cost.get("database") is not None:
            add("database_us_per_op", "database CPU per op applied", cost["database"], "µs")
    if run.get("cores_needed") is not None:
        add(
            "cores_needed",
            "CPU the offered load needs",
            run["cores_needed"],
            "cores",
            note=f"at that cost per op; this machine has {run.get('cpu_count')}",
        )
    return f
