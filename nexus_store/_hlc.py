"""Hybrid logical clock stamps for last-writer-wins conflict resolution.

A stamp is a string that sorts in causal-then-wall-time order across devices:
``"<millis:013d>-<counter:05d>-<node>"``. A clock never issues a stamp lower than one
it issued or received, even if the wall clock goes backwards.
"""

from __future__ import annotations

import threading
import uuid

from ._clock import Clock, SystemClock

__all__ = ["HybridLogicalClock", "parse_stamp"]

_MAX_COUNTER = 99_999


def parse_stamp(stamp: str) -> tuple[int, int, str]:
    """Split a stamp into ``(millis, counter, node)``.

    Raises:
        ValueError: if ``stamp`` is not a valid stamp.
    """
    millis, counter, node = stamp.split("-", 2)
    if len(millis) != 13 or len(counter) != 5 or not node:
        raise ValueError(f"not a hybrid logical clock stamp: {stamp!r}")
    return int(millis), int(counter), node


class HybridLogicalClock:
    """Issues monotonically increasing, globally sortable stamps.

    Args:
        node: a short id of this replica (random by default).
        clock: where wall time is read.
    """

    def __init__(self, node: str | None = None, *, clock: Clock | None = None) -> None:
        self.node = node or uuid.uuid4().hex[:12]
        if "-" in self.node:
            raise ValueError("an HLC node id must not contain '-'")
        self._clock = clock or SystemClock()
        self._millis = 0
        self._counter = 0
        self._lock = threading.Lock()

    def _format(self) -> str:
        return f"{self._millis:013d}-{self._counter:05d}-{self.node}"

    def now(self) -> str:
        """Issue a new stamp for a local event."""
        wall = int(self._clock.now() * 1000)
        with self._lock:
            if wall > self._millis:
                self._millis, self._counter = wall, 0
            else:
                self._bump()
            return self._format()

    def observe(self, stamp: str) -> None:
        """Merge a stamp received from elsewhere, so later local stamps sort after it."""
        millis, counter, _ = parse_stamp(stamp)
        with self._lock:
            self._millis, self._counter = max((self._millis, self._counter), (millis, counter))

    def _bump(self) -> None:
        if self._counter >= _MAX_COUNTER:
            self._millis += 1
            self._counter = 0
        else:
            self._counter += 1
