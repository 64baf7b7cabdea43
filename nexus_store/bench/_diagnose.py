"""What limited a sync load run, decided from its figures (a pure function).

The first line :func:`limits` returns is the main limit; the rest are what else was seen.
The rules, in order:

- the server said no: rate limits (429), server errors (5xx), timeouts, broken
  connections, answers that were not the protocol;
- the machine cannot carry the offered load: at the CPU this run spent per op (clients,
  server and a database started here), the ops offered per second need more cores than
  the machine has (:class:`CpuCost`);
- the client side could not keep up: a client process near a full core, or at least half
  a core while its event loop runs late by more than 50 ms at p99 or scheduled saves
  start late (open loop); late at less than half a core means the processes waited for
  a CPU that other work held;
- other work on the machine: a load average above what the run's own processes (each
  counts at most 1) explain by more than half the CPUs;
- the machine: clients and server (and a database server started here) together near
  every core (they share this machine);
- the server process near a full core (one process serves one core);
- otherwise: in an open loop the server kept up (the load offered was the limit), in a
  closed loop each client waits for its answer, so the server's answer time is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["CpuCost", "RunShape", "limits"]

_BUSY = 85.0
"""Percent of a core above which a process counts as saturated."""
_LAG_MS = 50.0


@dataclass(frozen=True)
class RunShape:
    """The figures the diagnosis reads."""

    offered_ops_s: float | None
    applied_ops_s: float
    errors: Mapping[str, int]
    requests: int
    client_cpu: Sequence[float]
    """Percent of a core, per client process."""
    loop_lag_p99_ms: float
    late_p99_s: float
    interval: float | None
    cpu_count: int
    server_cpu: Sequence[float] = field(default_factory=list)
    """Percent of a core, per server process (empty: not known)."""
    server_is_local: bool = False
    database_cpu: float = 0.0
    """Percent of a core used by a database server on this machine (0: none, or not known)."""
    load_average: float | None = None
    """The machine's 1-minute load average at the end of the measured window."""
    saved_ops_s: float = 0.0
    """Ops the clients saved per second in the measured window (0: not known)."""


@dataclass(frozen=True)
class CpuCost:
    """CPU time per op, in microseconds (``None``: not measured here).

    The server and the database handle the ops applied; the clients both save and push
    each op, so theirs is per op saved or applied, whichever were more (while a backlog
    grows, more are saved than applied): at most what an op costs them, never more.
    """

    clients: float
    server: float | None
    database: float | None

    @classmethod
    def of(cls, shape: RunShape) -> CpuCost | None:
        """The cost of ``shape``'s run (``None``: nothing applied or no client CPU known)."""
        if shape.applied_ops_s <= 0 or not shape.client_cpu:
            return None
        per_op = 1e4 / shape.applied_ops_s  # percent of a core -> microseconds per op
        handled = max(shape.applied_ops_s, shape.saved_ops_s)
        local = shape.server_is_local and bool(shape.server_cpu)
        return cls(
            clients=sum(shape.client_cpu) * 1e4 / handled,
            server=sum(shape.server_cpu) * per_op if local else None,
            database=shape.database_cpu * per_op if local and shape.database_cpu else None,
        )

    @property
    def total(self) -> float:
        """Microseconds per op, all parts measured."""
        return self.clients + (self.server or 0.0) + (self.database or 0.0)

    def cores_for(self, ops_s: float) -> float:
        """Cores ``ops_s`` ops per second take at this cost."""
        return ops_s * self.total / 1e6

    def describe(self) -> str:
        """``clients 180 µs, server 50 µs``."""
        parts = [("clients", self.clients), ("server", self.server), ("database", self.database)]
        return ", ".join(f"{name} {us:,.0f} µs" for name, us in parts if us is not None)


def _over_the_machine(shape: RunShape) -> str | None:
    """The machine-bound line, when the offered load needs more cores than there are."""
    cost = CpuCost.of(shape)
    offered = shape.offered_ops_s
    if cost is None or cost.server is None or not offered:
        return None
    needed = cost.cores_for(offered)
    if needed <= shape.cpu_count:
        return None
    carry = shape.cpu_count * 1e6 / cost.total
    return (
        f"the machine's CPUs: the {offered:,.0f} ops/s offered need at least {needed:.1f} "
        f"cores at the CPU this run spent per op ({cost.describe()}), and this machine "
        f"has {shape.cpu_count}: its cores carry at most about {carry:,.0f} ops/s of "
        "clients and server together; lower --rate, or run the clients on another machine"
    )


def limits(shape: RunShape) -> list[str]:
    """What limited the run, main limit first (see the module docstring)."""
    out: list[str] = []
    errors = shape.errors
    said = {
        "429": "rate limits: {n:,} requests answered 429 (the server's --rate)",
        "5xx": "server errors: {n:,} requests answered 5xx",
        "timeout": "timeouts: {n:,} requests got no answer in time",
        "connection": "connections: {n:,} requests could not connect or lost the connection",
        "protocol": "garbage: {n:,} answers were not the sync protocol",
        "auth": "credentials: {n:,} requests were refused (401/403)",
        "4xx": "refused requests: {n:,} answered 4xx",
    }
    for kind, text in said.items():
        if errors.get(kind):
            out.append(text.format(n=errors[kind]))
    bound = _over_the_machine(shape)
    if bound is not None:
        out.append(bound)
    busiest = max(shape.client_cpu, default=0.0)
    late = shape.interval is not None and shape.late_p99_s > 0.25 * shape.interval
    lagging = shape.loop_lag_p99_ms > _LAG_MS
    pace = f"event loop late {shape.loop_lag_p99_ms:.0f} ms at p99"
    if shape.interval is not None:
        pace += f", saves started {shape.late_p99_s * 1000:.0f} ms late at p99"
    if busiest >= _BUSY or ((late or lagging) and busiest >= _BUSY / 2):
        out.append(
            f"client CPU: the simulated clients could not keep their pace (busiest client "
            f"process {busiest:.0f}% of a core, {pace}); add --processes, or run the "
            "clients on another machine"
        )
    elif late or lagging:
        out.append(
            f"CPU time: the client processes waited for a CPU ({pace}, at only "
            f"{busiest:.0f}% of a core each): other work on this machine competes for it"
        )
    own = len(shape.client_cpu) + (
        len(shape.server_cpu) + (1 if shape.database_cpu else 0) if shape.server_is_local else 0
    )
    if shape.load_average is not None and shape.load_average - own > shape.cpu_count / 2:
        out.append(
            f"other work on this machine: load average {shape.load_average:.1f} on "
            f"{shape.cpu_count} CPUs, more than this run's {own} processes explain; the "
            "figures are below what this set-up can do"
        )
    server_side = sum(shape.server_cpu) + shape.database_cpu if shape.server_is_local else 0.0
    used = sum(shape.client_cpu) + server_side
    if shape.server_is_local and used >= _BUSY * shape.cpu_count:
        who = "clients, server and database" if shape.database_cpu else "clients and server"
        out.append(
            f"the machine's CPUs: {who} together used {used / 100:.1f} of {shape.cpu_count} cores"
        )
    for n, cpu in enumerate(shape.server_cpu):
        if cpu >= _BUSY:
            out.append(f"server CPU: server process {n + 1} used {cpu:.0f}% of a core")
    if not out:
        offered = shape.offered_ops_s
        if offered is not None and shape.applied_ops_s >= 0.95 * offered:
            out.append(
                "nothing: the server kept up with the offered load "
                f"({offered:,.0f} ops/s); raise --rate to find its limit"
            )
        elif offered is not None:
            out.append(
                f"the server's answer time: it applied {shape.applied_ops_s:,.0f} of "
                f"{offered:,.0f} ops/s offered without errors or a busy client"
            )
        else:
            out.append(
                "the server's answer time (closed loop: each client waits for its answer "
                "before it pushes again; add --clients for more load)"
            )
    return out
