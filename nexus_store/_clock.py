"""Time, injectable: every schedule, lease and backoff reads the time through a ``Clock``.

``SystemClock`` is the real one. ``FakeClock`` only moves when told to, so schedules,
leases and backoff are tested without sleeping: ``await clock.sleep(60)`` returns as soon
as a test calls ``clock.advance(60)``.

Two readings, two uses: ``now()`` is the wall clock (comparable across processes, stored in
the file, but it can be stepped: NTP corrections, a laptop resuming, a user fixing the date);
``monotonic()`` never goes backwards and is what waits inside a process are measured on
(``sleep`` included). :meth:`FakeClock.step` steps the wall clock alone, the way those
events do.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where the package reads the time and waits for it to pass."""

    def now(self) -> float:
        """Wall-clock time in seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """A clock that never goes backwards, for measuring durations."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The real clock: ``time.time``, ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of real time."""
        await anyio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that moves only when :meth:`advance`, :meth:`set` or :meth:`step` is called.

    Sleepers wake, in deadline order, once the clock reaches their deadline. ``now()`` and
    ``monotonic()`` read the same fake time until :meth:`step` moves the wall clock alone.

    Args:
        start: the initial time in seconds since the epoch.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = 0.0
        self._lock = threading.Lock()
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        """The fake wall time."""
        with self._lock:
            return self._now + self._wall_offset

    def monotonic(self) -> float:
        """The fake monotonic time (the wall time less every :meth:`step` taken)."""
        with self._lock:
            return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds``."""
        event = anyio.Event()
        with self._lock:
            deadline = self._now + max(0.0, seconds)
            if deadline <= self._now:
                event.set()
            else:
                heapq.heappush(self._sleepers, (deadline, next(self._counter), event))
        if event.is_set():
            await anyio.lowlevel.checkpoint()
            return
        await event.wait()

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock."""
        with self._lock:
            return len(self._sleepers)

    def next_deadline(self) -> float | None:
        """The earliest time a sleeper is waiting for, if any."""
        with self._lock:
            return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleeper whose deadline has come.

        Raises:
            ValueError: if ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError("a FakeClock cannot go backwards; use set() to jump")
        with self._lock:
            target = self._now + self._wall_offset + seconds
        self.set(target)

    def step(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (either way), as NTP or a user does.

        Only :meth:`now` moves: monotonic time, and so every sleeper, is unaffected.
        """
        with self._lock:
            self._wall_offset += float(seconds)

    def set(self, when: float) -> None:
        """Jump the clock to ``when`` (may go backwards, like a wall clock being changed).

        Wall and monotonic time both move (unlike :meth:`step`), so sleepers whose
        deadline is reached wake.
        """
        woken: list[anyio.Event] = []
        with self._lock:
            self._now = float(when) - self._wall_offset
            while self._sleepers and self._sleepers[0][0] <= self._now:
                woken.append(heapq.heappop(self._sleepers)[2])
        for event in woken:
            event.set()

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now()!r})"
