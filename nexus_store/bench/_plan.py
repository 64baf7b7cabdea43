"""What a sync load run will do, decided before anything is sent (pure functions).

:class:`LoadConfig` holds the options of ``nexus-store bench sync``; :func:`plan` turns
it into the load it will send (ops per second offered, ops and bytes in all) and
:func:`needs_consent` says whether that is more than may be sent to a host that is not
this machine without ``--yes``. :func:`parse_mix` reads ``--mix push:pull:poke`` and
:func:`action_cycle` spreads the actions evenly (smooth weighted round robin).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .._exceptions import NexusStoreError
from .._http_api import is_loopback_host

__all__ = [
    "CONSENT_FREE_OPS",
    "Action",
    "BenchInputError",
    "LoadConfig",
    "LoadPlan",
    "action_cycle",
    "check_config",
    "needs_consent",
    "parse_mix",
    "plan",
]

Action = Literal["push", "pull", "poke"]
ACTIONS: tuple[Action, ...] = ("push", "pull", "poke")

CONSENT_FREE_OPS = 20_000
"""The most ops a run may send to a host that is not this machine without ``--yes``."""

_WIRE_OVERHEAD = 150
"""Bytes an op carries on the wire besides its payload (op id, stamp, field names)."""


class BenchInputError(NexusStoreError, ValueError):
    """An option or a remote the benchmark cannot use: one line says why."""


@dataclass(frozen=True)
class LoadConfig:
    """The options of a sync load run.

    Attributes:
        urls: the servers' base URLs; clients are spread over them in turn.
        clients: simulated clients, each with its own store file.
        batch: ops per save and per push.
        payload_bytes: about how many bytes each op's item holds.
        duration: seconds of measured load (after the warm-up).
        ops: ops each client writes at most (``None``: until ``duration`` ends).
        rate: ops per second offered by all clients together (open loop); ``None``:
            closed loop (each client pushes again as soon as its last push is answered).
        mix: weights of push, pull and poke actions.
        warmup: seconds of load at the start that are not counted.
        processes: client processes (0: chosen from the CPU count).
        timeout: seconds for each request (connect, read, write).
        drain_timeout: seconds to wait, after the load, for every queue to empty.
        critical_every: seconds between ``CRITICAL`` probe saves in each client process.
        allow_insecure_http: send the token over plain http to a non-loopback host.
        client_durability: the simulated clients' stores: ``"normal"`` (the default: no
            disk sync per commit, so thousands of client commits per second do not queue
            for the disk; the load on the server is the same) or ``"full"`` (as apps run
            by default; ``nexus-store bench local`` measures what that costs).
    """

    urls: tuple[str, ...]
    clients: int = 10
    batch: int = 100
    payload_bytes: int = 200
    duration: float = 10.0
    ops: int | None = None
    rate: float | None = None
    mix: tuple[int, int, int] = (1, 0, 0)
    warmup: float = 2.0
    processes: int = 0
    timeout: float = 30.0
    drain_timeout: float = 120.0
    critical_every: float = 1.0
    allow_insecure_http: bool = False
    client_durability: Literal["normal", "full"] = "normal"

    def with_clients(self, clients: int) -> LoadConfig:
        """The same run with another number of clients (one step of a sweep)."""
        return dataclasses.replace(self, clients=clients)

    @property
    def closed_loop(self) -> bool:
        """Whether clients push again as soon as answered (no ``rate``)."""
        return self.rate is None

    @property
    def interval(self) -> float | None:
        """Seconds between one client's actions in the open loop (``None``: closed loop)."""
        if self.rate is None:
            return None
        return self.batch * self.clients / self.rate


@dataclass(frozen=True)
class LoadPlan:
    """How much a run sends (upper bounds for a closed loop: it sends as fast as answered)."""

    offered_ops_s: float | None
    """Ops per second offered (open loop); ``None`` in a closed loop."""
    total_ops: int | None
    """Ops written in all, at most (``None``: a closed loop bounded by time only)."""
    total_bytes: int | None
    seconds: float
    """Seconds of load, warm-up included."""
    hosts: tuple[str, ...]
    loopback: bool
    """Whether every host is this machine."""

    def describe(self, config: LoadConfig) -> str:
        """One sentence naming the load, for the terminal before anything is sent."""
        pushes = config.mix[0] / max(1, sum(config.mix))
        if self.offered_ops_s is not None:
            pace = f"{self.offered_ops_s:,.0f} ops/s in all (open loop)"
        else:
            pace = "as fast as the server answers (closed loop)"
        amount = (
            f"at most {self.total_ops:,} ops ({_size(self.total_bytes or 0)})"
            if self.total_ops is not None
            else "as many ops as the server answers in that time"
        )
        return (
            f"{config.clients:,} clients x {config.batch} ops per push"
            f"{'' if pushes == 1 else f' (mix push:pull:poke {_mix(config.mix)})'}, {pace}, "
            f"for {self.seconds:g} s ({config.warmup:g} s warm-up): {amount} "
            f"to {', '.join(self.hosts)}"
        )


def _mix(mix: Sequence[int]) -> str:
    return ":".join(str(m) for m in mix)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def parse_mix(text: str) -> tuple[int, int, int]:
    """``"push:pull:poke"`` weights, e.g. ``"8:1:1"`` (missing ones are 0).

    Raises:
        BenchInputError: not up to three non-negative integers, or no push at all.
    """
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.strip().isdigit() for p in parts):
        raise BenchInputError(f"--mix takes push:pull:poke weights like 8:1:1, not {text!r}")
    weights = [int(p) for p in parts] + [0] * (3 - len(parts))
    if weights[0] == 0:
        raise BenchInputError("--mix needs a push weight above 0 (the load is the pushes)")
    if max(weights) > 1000:
        raise BenchInputError("--mix weights are at most 1000")
    return weights[0], weights[1], weights[2]


def action_cycle(mix: Sequence[int]) -> list[Action]:
    """One round of actions in the proportions of ``mix``, spread evenly."""
    weights = list(mix)
    total = sum(weights)
    current = [0] * len(weights)
    out: list[Action] = []
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        out.append(ACTIONS[best])
    return out


def check_config(config: LoadConfig) -> None:
    """Refuse options that cannot make a run.

    Raises:
        BenchInputError: what is wrong, in one line.
    """
    if not config.urls:
        raise BenchInputError("give the server's address: --remote URL")
    for url in config.urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BenchInputError(f"--remote needs an http(s) URL, not {url!r}")
    checks = (
        (config.clients >= 1, "--clients must be at least 1"),
        (config.clients <= 10_000, "--clients is at most 10,000"),
        (1 <= config.batch <= 10_000, "--batch must be between 1 and 10,000"),
        (0 <= config.payload_bytes <= 1_000_000, "--payload-bytes is between 0 and 1,000,000"),
        (config.duration > 0 and math.isfinite(config.duration), "--duration must be > 0"),
        (config.ops is None or config.ops >= 1, "--ops must be at least 1"),
        (config.rate is None or config.rate > 0, "--rate must be above 0 ops/s"),
        (config.warmup >= 0, "--warmup must be >= 0"),
        (config.processes >= 0, "--processes must be >= 0"),
        (config.timeout > 0, "--timeout must be > 0"),
    )
    for ok, message in checks:
        if not ok:
            raise BenchInputError(message)


def plan(config: LoadConfig) -> LoadPlan:
    """The load ``config`` will send (see :class:`LoadPlan`)."""
    seconds = config.warmup + config.duration
    push_share = config.mix[0] / max(1, sum(config.mix))
    hosts = tuple(dict.fromkeys(urlsplit(u).hostname or u for u in config.urls))
    by_ops = config.ops * config.clients if config.ops is not None else None
    if config.rate is not None:
        offered = config.rate * push_share
        by_time: int | None = math.ceil(offered * seconds)
    else:
        offered = None
        by_time = None
    candidates = [n for n in (by_ops, by_time) if n is not None]
    total = min(candidates) if candidates else None
    op_bytes = config.payload_bytes + _WIRE_OVERHEAD
    return LoadPlan(
        offered_ops_s=offered,
        total_ops=total,
        total_bytes=None if total is None else total * op_bytes,
        seconds=seconds,
        hosts=hosts,
        loopback=all(is_loopback_host(h) for h in hosts),
    )


def needs_consent(load: LoadPlan, config: LoadConfig) -> bool:
    """Whether the run needs ``--yes``: more than :data:`CONSENT_FREE_OPS` to a host that
    is not this machine (a closed loop bounded by time alone counts as more)."""
    if load.loopback:
        return False
    if load.total_ops is None:
        # A closed loop sends as fast as it is answered: bounded only by time.
        return True
    return load.total_ops > CONSENT_FREE_OPS or config.clients > 100
