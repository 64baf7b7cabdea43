"""The options of ``bench sync`` and ``bench server``, with the presets filled in (pure).

Every option a user leaves out takes the value of the preset in force: ``--quick`` (a
few clients for a few seconds, what the tests run), ``--standard`` (the published figure:
200 clients each pushing a batch of 100 ops per second for 5 minutes, with its targets),
or the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._plan import BenchInputError, LoadConfig, parse_mix
from ._syncresult import SyncTargets

__all__ = ["DEFAULT", "QUICK", "STANDARD", "LoadOptions", "Preset", "parse_clients"]


@dataclass(frozen=True)
class Preset:
    """The values a run takes for the options left out."""

    clients: tuple[int, ...] = (10,)
    batch: int = 100
    rate: float | None = None
    duration: float = 10.0
    warmup: float = 2.0
    drain_timeout: float = 120.0
    min_ops_s: float | None = None


DEFAULT = Preset()
QUICK = Preset(clients=(4,), duration=3.0, warmup=1.0, drain_timeout=60.0)
STANDARD = Preset(
    clients=(200,), batch=100, rate=20_000.0, duration=300.0, warmup=10.0, min_ops_s=2_000.0
)
"""``--standard``: 200 clients x one batch of 100 ops per second, 5 minutes, >= 2,000 ops/s."""


def parse_clients(text: str) -> list[int]:
    """``"10"`` or ``"10,50,200"`` (a sweep: one run per count, in order).

    Raises:
        BenchInputError: not positive integers.
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise BenchInputError(f"--clients takes counts like 10 or 10,50,200, not {text!r}")
    return [int(p) for p in parts]


@dataclass(frozen=True)
class LoadOptions:
    """What the command line said (``None``: not said)."""

    clients: str | None = None
    ops: int | None = None
    batch: int | None = None
    payload_bytes: int | None = None
    duration: float | None = None
    rate: float | None = None
    mix: str | None = None
    warmup: float | None = None
    processes: int | None = None
    timeout: float | None = None
    drain_timeout: float | None = None
    critical_every: float | None = None
    client_durability: Literal["normal", "full"] | None = None
    allow_insecure_http: bool = False
    target_ops: float | None = None
    target_p99_ms: float | None = None
    target_error_pct: float | None = None
    quick: bool = False
    standard: bool = False

    def resolve(self, urls: tuple[str, ...]) -> tuple[LoadConfig, list[int], SyncTargets]:
        """The run(s) and their targets.

        Raises:
            BenchInputError: ``--quick`` with ``--standard``, or a bad value.
        """
        if self.quick and self.standard:
            raise BenchInputError("--quick and --standard are two different runs: pick one")
        preset = STANDARD if self.standard else QUICK if self.quick else DEFAULT
        counts = parse_clients(self.clients) if self.clients else list(preset.clients)
        config = LoadConfig(
            urls=urls,
            clients=counts[0],
            batch=self.batch if self.batch is not None else preset.batch,
            payload_bytes=self.payload_bytes if self.payload_bytes is not None else 200,
            duration=self.duration if self.duration is not None else preset.duration,
            ops=self.ops,
            rate=self.rate if self.rate is not None else preset.rate,
            mix=parse_mix(self.mix) if self.mix else (1, 0, 0),
            warmup=self.warmup if self.warmup is not None else preset.warmup,
            processes=self.processes or 0,
            timeout=self.timeout if self.timeout is not None else 30.0,
            drain_timeout=(
                self.drain_timeout if self.drain_timeout is not None else preset.drain_timeout
            ),
            critical_every=self.critical_every if self.critical_every is not None else 1.0,
            allow_insecure_http=self.allow_insecure_http,
            client_durability=self.client_durability or "normal",
        )
        targets = SyncTargets(
            min_ops_s=self.target_ops if self.target_ops is not None else preset.min_ops_s,
            max_push_p99_ms=self.target_p99_ms if self.target_p99_ms is not None else 500.0,
            max_error_pct=self.target_error_pct if self.target_error_pct is not None else 0.1,
        )
        return config, counts, targets
