"""A remote's ``Retry-After``, honoured for every request to it, not per op.

When a server answers 429 (rate limited) or 503 (unavailable) with ``Retry-After``, it
asks the client to stay away until then. :class:`RemotePause` keeps that deadline for one
backend object: until it passes, every request (push, pull, events) fails at once with
the same error type and the time that is left as ``retry_after``, and nothing is sent.

The deadline is kept on the monotonic clock, so a step of the wall clock neither ends the
pause early nor stretches it.
"""

from __future__ import annotations

from .._clock import Clock
from .._exceptions import RateLimitedError, RemoteError, ServerUnavailableError

__all__ = ["PAUSING_STATUSES", "RemotePause", "pause_for"]

PAUSING_STATUSES = frozenset({429, 503})
"""Answers whose ``Retry-After`` pauses every request to the remote."""


def pause_for(status: int, retry_after: float | None) -> float | None:
    """Seconds every request must wait after an answer (``None``: no pause).

    Args:
        status: the HTTP status of the answer.
        retry_after: its ``Retry-After``, in seconds, if it had a readable one.
    """
    if status not in PAUSING_STATUSES or retry_after is None or not retry_after > 0:
        return None
    return retry_after


class RemotePause:
    """The deadline before which no request may go to one remote.

    Args:
        clock: where monotonic time is read.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until: float | None = None
        self._error: type[RemoteError] = ServerUnavailableError
        self._reason = ""

    @property
    def remaining(self) -> float:
        """Seconds until requests may be sent again (``0.0``: not paused)."""
        if self._until is None:
            return 0.0
        left = self._until - self._clock.monotonic()
        if left <= 0:
            self._until = None
            return 0.0
        return left

    def start(self, seconds: float, error: RemoteError) -> None:
        """Pause for ``seconds`` because of ``error`` (a longer pause already running stays).

        Args:
            seconds: the remote's ``Retry-After``.
            error: what the remote answered (its type is what paused calls raise).
        """
        until = self._clock.monotonic() + seconds
        if self._until is None or until > self._until:
            self._until = until
            self._error = (
                RateLimitedError if isinstance(error, RateLimitedError) else ServerUnavailableError
            )
            self._reason = str(error)

    def check(self) -> None:
        """Raise if requests must wait; return if one may be sent now.

        Raises:
            RateLimitedError: paused by a 429 (``retry_after``: seconds left).
            ServerUnavailableError: paused by a 503 (``retry_after``: seconds left).
        """
        left = self.remaining
        if left > 0:
            raise self._error(
                f"not sent: the server asked to wait {left:.1f} s more ({self._reason})",
                retry_after=left,
            )
