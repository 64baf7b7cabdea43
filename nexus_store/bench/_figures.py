"""Figures, their targets, and the comparison of two runs (pure data and decisions).

Every number a ``nexus-store bench`` subcommand prints is a :class:`Figure`: a stable
key (what ``--compare`` matches on), a label, a value and unit, which way is better, and
an optional :class:`Target`. :func:`missed` lists the targets not met (what ``--check``
fails on); :func:`compare` lines up the figures of an earlier run with this one's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Change",
    "Figure",
    "Target",
    "compare",
    "figure_from_json",
    "missed",
]

Better = Literal["higher", "lower"]
Op = Literal[">=", "<=", ">", "<", "=="]


@dataclass(frozen=True)
class Target:
    """A bound a figure must keep, e.g. ``Target(">=", 2000)``."""

    op: Op
    bound: float

    def met(self, value: float | None) -> bool:
        """Whether ``value`` keeps the bound (a missing or NaN value never does)."""
        if value is None or math.isnan(value):
            return False
        return {
            ">=": value >= self.bound,
            "<=": value <= self.bound,
            ">": value > self.bound,
            "<": value < self.bound,
            "==": value == self.bound,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.op} {_number(self.bound)}"


@dataclass(frozen=True)
class Figure:
    """One measured number.

    Attributes:
        key: stable name across runs, e.g. ``"sync.c200.push_p99_ms"``.
        group: the section it is printed in, e.g. ``"sync, 200 clients"``.
        label: what it is, for people.
        value: the measurement (``None``: could not be measured in this run).
        unit: ``"ops/s"``, ``"ms"``, ``"%"``, ``"x"``, ``"MiB"``, ``"s"``, ``""``...
        better: which way is an improvement (``None``: neither, e.g. a count of clients).
        target: the bound it must keep, if any.
        note: what it is measured against, or why it is missing.
    """

    key: str
    group: str
    label: str
    value: float | None
    unit: str = ""
    better: Better | None = None
    target: Target | None = None
    note: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the target is met (``None``: no target)."""
        return None if self.target is None else self.target.met(self.value)

    def to_json(self) -> dict[str, Any]:
        """The figure as a JSON object."""
        return {
            "key": self.key,
            "group": self.group,
            "label": self.label,
            "value": None if self.value is None or math.isnan(self.value) else self.value,
            "unit": self.unit,
            "better": self.better,
            "target": None if self.target is None else str(self.target),
            "met": self.met,
            "note": self.note,
        }


def figure_from_json(data: Mapping[str, Any]) -> Figure:
    """A figure read back from :meth:`Figure.to_json`.

    Raises:
        ValueError: not a figure object.
    """
    try:
        target = None
        if data.get("target"):
            op, bound = str(data["target"]).split(" ", 1)
            target = Target(op, float(bound.replace(",", "")))  # type: ignore[arg-type]
        value = data.get("value")
        return Figure(
            key=str(data["key"]),
            group=str(data.get("group", "")),
            label=str(data.get("label", data["key"])),
            value=None if value is None else float(value),
            unit=str(data.get("unit", "")),
            better=data.get("better"),
            target=target,
            note=str(data.get("note", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a figure: {exc}") from exc


def missed(figures: Iterable[Figure]) -> list[Figure]:
    """The figures whose target is not met."""
    return [f for f in figures if f.met is False]


@dataclass(frozen=True)
class Change:
    """One figure in an earlier run and in this one."""

    figure: Figure
    old: float | None
    new: float | None
    ratio: float | None = None
    """new / old (``None`` when either is missing or old is 0)."""
    verdict: Literal["better", "worse", "same", ""] = ""
    notes: list[str] = field(default_factory=list)


def compare(old: Sequence[Figure], new: Sequence[Figure], *, noise: float = 0.05) -> list[Change]:
    """Line up the figures of two runs by key (this run's order; figures of only one run
    are left out). A change within ``noise`` (5 %) of the old value is ``same``."""
    before = {f.key: f for f in old}
    out: list[Change] = []
    for figure in new:
        earlier = before.get(figure.key)
        if earlier is None:
            continue
        a, b = earlier.value, figure.value
        ratio = b / a if a not in (None, 0) and b is not None else None
        verdict: Literal["better", "worse", "same", ""] = ""
        if ratio is not None and figure.better is not None:
            if abs(ratio - 1) <= noise:
                verdict = "same"
            elif (ratio > 1) == (figure.better == "higher"):
                verdict = "better"
            else:
                verdict = "worse"
        out.append(Change(figure, a, b, ratio, verdict))
    return out


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
