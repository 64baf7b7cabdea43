"""A clock that is off by a fixed amount from another: a device whose clock is wrong.

:class:`SkewedClock` reads its wall time from a base clock (usually a
:class:`~nexus_store.testing.FakeClock` shared by every simulated device and server) plus an
offset, so a test can run a client 24 hours fast beside a correct server and move time
for both with one ``advance``. Its monotonic time and sleeps are the base clock's: only
the wall clock is wrong, as on a real device.
"""

from __future__ import annotations

from .._clock import Clock

__all__ = ["SkewedClock"]


class SkewedClock:
    """``base``'s time plus ``offset`` seconds on the wall clock.

    Args:
        base: the true time.
        offset: seconds this clock is ahead of ``base`` (negative: behind); may be changed
            later through :attr:`offset` (a user setting the clock right).
    """

    def __init__(self, base: Clock, offset: float) -> None:
        self.base = base
        self.offset = float(offset)

    def now(self) -> float:
        """The base clock's wall time plus :attr:`offset`."""
        return self.base.now() + self.offset

    def monotonic(self) -> float:
        """The base clock's monotonic time (a wrong wall clock does not change it)."""
        return self.base.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the base clock."""
        await self.base.sleep(seconds)

    def __repr__(self) -> str:
        return f"SkewedClock({self.base!r}, offset={self.offset:+g})"
