"""Summaries of measured samples: percentiles, a CDF, per-second timelines (pure)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["cdf", "merge_counts", "percentile", "summary", "timeline"]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted samples, by nearest rank (NaN if none)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(samples: Iterable[float]) -> dict[str, float]:
    """Count, mean, p50, p95, p99 and max of the samples (NaNs when there are none)."""
    ordered = sorted(samples)
    if not ordered:
        nan = math.nan
        return {"count": 0, "mean": nan, "p50": nan, "p95": nan, "p99": nan, "max": nan}
    return {
        "count": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def cdf(samples: Iterable[float], points: int = 200) -> list[tuple[float, float]]:
    """At most ``points`` (value, fraction of samples <= value) pairs, with both ends kept."""
    ordered = sorted(samples)
    n = len(ordered)
    if n == 0:
        return []
    step = max(1, n // points)
    indices = list(range(step - 1, n, step))
    if indices[-1] != n - 1:
        indices.append(n - 1)
    if indices[0] != 0:
        indices.insert(0, 0)
    return [(ordered[i], (i + 1) / n) for i in indices]


def merge_counts(parts: Iterable[Mapping[str, int]]) -> Counter[str]:
    """Counts of several processes added up."""
    total: Counter[str] = Counter()
    for part in parts:
        total.update({str(k): int(v) for k, v in part.items()})
    return total


def timeline(per_second: Mapping[str, int], until: int) -> list[tuple[int, int]]:
    """``(second, count)`` for every second from 0 to ``until`` (missing seconds are 0)."""
    counts = {int(k): v for k, v in per_second.items()}
    return [(s, counts.get(s, 0)) for s in range(until + 1)]
