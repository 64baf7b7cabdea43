"""The server's bound on clock offsets: re-stamping ops from the future, clock headers.

Last-writer-wins trusts the hybrid logical clock stamp of each op, and a stamp comes from
the writing device's clock. Left alone, a device whose clock runs a day fast wins every
concurrent edit for a day. The server bounds that the way clock-bounded databases do:

- **Re-stamp, not refuse.** An op stamped more than ``max_clock_offset`` seconds ahead of
  the server's clock is applied with its stamp's time replaced by the server's time
  (counter and node kept): :func:`bound_stamps`. Refusing it would lose the edit (or stall
  it until the device's clock is right); re-stamping keeps the edit and lets it compete
  as if it was made when it reached the server. The op's fingerprint (its idempotency
  record) is that of the op as sent, so a replay is still recognised.
- **Every answer states the server's clock** (:class:`ClockHeaders`: ``Nexus-Clock`` and
  ``Nexus-Clock-Bound``, in milliseconds), so clients observe it (the HLC receive rule)
  and a client whose clock is off by more than the bound stamps with the server's time
  instead, and is told so (see :mod:`nexus_store._hlc`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from .._clock import Clock
from .._hlc import restamped, stamp_limit
from .._http_api import CLOCK_BOUND_HEADER, CLOCK_HEADER

if TYPE_CHECKING:
    from ._prepare import PreparedOp

__all__ = ["DEFAULT_MAX_CLOCK_OFFSET", "ClockHeaders", "bound_stamps", "check_max_offset"]

DEFAULT_MAX_CLOCK_OFFSET = 300.0
"""Seconds an op's stamp may be ahead of the server's clock before it is re-stamped."""

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def check_max_offset(seconds: float) -> float:
    """Return ``seconds`` if it is a usable bound (positive and finite).

    Raises:
        ValueError: zero, negative, infinite or NaN.
    """
    if not 0 < seconds < float("inf"):
        raise ValueError(f"the maximum clock offset must be positive seconds, not {seconds!r}")
    return float(seconds)


def bound_stamps(ops: Sequence[PreparedOp], now_millis: int, max_offset_millis: int) -> int:
    """Re-stamp, in place, the valid ops stamped beyond the server's time plus the bound.

    Args:
        ops: a batch of prepared ops.
        now_millis: the server's wall time, in milliseconds since the epoch.
        max_offset_millis: how far ahead a stamp may be.

    Returns:
        How many ops were re-stamped (their ``hlc`` now holds ``now_millis``).
    """
    limit = stamp_limit(now_millis + max_offset_millis)
    count = 0
    for op in ops:
        if op.hlc > limit and op.invalid is None:
            op.hlc = restamped(op.hlc, now_millis)
            count += 1
    return count


class ClockHeaders:
    """ASGI middleware: every HTTP answer carries the server's clock and its bound.

    Args:
        app: the ASGI app to wrap.
        clock: the server's clock (the one its core re-stamps with).
        max_offset: the bound, in seconds.
    """

    def __init__(self, app: _App, *, clock: Clock, max_offset: float) -> None:
        self.app = app
        self._clock = clock
        self._bound = str(round(max_offset * 1000)).encode()

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock, bound = self._clock, self._bound

        async def send_with_clock(message: _Message) -> None:
            if message["type"] == "http.response.start":
                now = str(int(clock.now() * 1000)).encode()
                headers = [
                    *message.get("headers", ()),
                    (CLOCK_HEADER.encode(), now),
                    (CLOCK_BOUND_HEADER.encode(), bound),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_clock)
