"""Hybrid logical clock stamps for last-writer-wins conflict resolution.

A stamp is a string that sorts in causal-then-wall-time order across devices:
``"<millis:013d>-<counter:05d>-<node>"``. A clock never issues a stamp lower than one
it issued or received, even if the wall clock goes backwards, with one exception below.

**Bounded skew.** A sync server states its clock and its bound on clock offsets with every
answer (a :class:`ClockReading`). The clock observes the server's time like a received
stamp (the HLC receive rule: later stamps sort after it). When the local wall clock is
off from the server's by more than the bound, the clock stamps with the server's time
instead (the local wall clock plus the measured offset) until a reading within the bound
arrives; stamps it issued from a wall clock found to be ahead by more than the bound are
then no longer a floor (the server re-stamps such ops anyway, see
:mod:`nexus_store.server`). So a device 24 h fast does not win every concurrent edit for a
day, and one 24 h slow does not lose them all.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

from ._clock import Clock, SystemClock

__all__ = [
    "ClockReading",
    "HybridLogicalClock",
    "parse_stamp",
    "restamped",
    "stamp_limit",
]

_MAX_COUNTER = 99_999
_MILLIS_DIGITS = 13


@dataclass(frozen=True, slots=True)
class ClockReading:
    """A remote's clock as one of its answers stated it.

    Attributes:
        server_time: the remote's wall time when it answered (seconds since the epoch).
        local_time: the local wall time at that moment (the midpoint between sending the
            request and receiving the answer).
        max_offset: the remote's bound on clock offsets, in seconds (``None``: unknown).
    """

    server_time: float
    local_time: float
    max_offset: float | None = None

    @property
    def skew(self) -> float:
        """Seconds the local clock is ahead of the remote's (negative: behind)."""
        return self.local_time - self.server_time

    @property
    def beyond_bound(self) -> bool:
        """Whether the local clock is off by more than the remote's bound."""
        return self.max_offset is not None and abs(self.skew) > self.max_offset


def stamp_limit(millis: int) -> str:
    """The string every stamp of a time after ``millis`` sorts above (and no other does).

    ``stamp > stamp_limit(m)`` holds exactly for stamps whose millisecond part exceeds
    ``m`` (and for strings that are not stamps but sort as if they did).
    """
    # "." sorts right after "-", the separator after the millisecond digits.
    return f"{millis:0{_MILLIS_DIGITS}d}."


def restamped(stamp: str, millis: int) -> str:
    """``stamp`` with its millisecond part replaced by ``millis`` (counter and node kept)."""
    return f"{millis:0{_MILLIS_DIGITS}d}{stamp[_MILLIS_DIGITS:]}"


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
        self._seen = (0, 0)
        """The latest remote time observed: a floor that a correction never goes below."""
        self._offset = 0.0
        """Seconds added to the wall clock (non-zero while it is off beyond the bound)."""
        self._bound: float | None = None
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        """Seconds added to the wall clock to stamp (``0.0`` unless it is off beyond a
        remote's bound)."""
        return self._offset

    def _format(self) -> str:
        return f"{self._millis:013d}-{self._counter:05d}-{self.node}"

    def _wall(self) -> int:
        return int((self._clock.now() + self._offset) * 1000)

    def now(self) -> str:
        """Issue a new stamp for a local event."""
        wall = self._wall()
        with self._lock:
            if wall > self._millis:
                self._millis, self._counter = wall, 0
            else:
                self._bump()
            return self._format()

    def observe(self, stamp: str) -> None:
        """Merge a stamp received from elsewhere, so later local stamps sort after it.

        A stamp further ahead of this clock than a remote's bound allows is not merged
        (it could only come from a clock that is wrong, and would drag this one along).

        Raises:
            ValueError: ``stamp`` is not a stamp.
        """
        millis, counter, _ = parse_stamp(stamp)
        with self._lock:
            if self._bound is not None and millis > self._wall() + self._bound * 1000:
                return
            self._seen = max(self._seen, (millis, counter))
            self._millis, self._counter = max((self._millis, self._counter), (millis, counter))

    def observe_clock(self, reading: ClockReading) -> float | None:
        """Merge a remote's clock reading (see the module docstring).

        The skew is measured against this clock's own wall time when it observes the
        reading (right after the answer arrived), so it holds for the clock that stamps
        even when the reading was taken on another.

        Returns:
            The seconds this wall clock is ahead of the remote's (negative: behind) when
            that is beyond the remote's bound (stamps then follow the remote's time), else
            ``None``.
        """
        skew = self._clock.now() - reading.server_time
        bound = reading.max_offset
        beyond = bound is not None and abs(skew) > bound
        remote = (int(reading.server_time * 1000), 0)
        with self._lock:
            self._offset = -skew if beyond else 0.0
            self._bound = bound
            if beyond and skew > 0:
                # Stamps issued from a wall clock found to be ahead are not a floor.
                corrected = (self._wall(), 0)
                if (self._millis, self._counter) > corrected:
                    self._millis, self._counter = max(self._seen, corrected)
            self._seen = max(self._seen, remote)
            self._millis, self._counter = max((self._millis, self._counter), remote)
        return skew if beyond else None

    def _bump(self) -> None:
        if self._counter >= _MAX_COUNTER:
            self._millis += 1
            self._counter = 0
        else:
            self._counter += 1
