"""What the queue does with a failed op: pure decisions of attempts, error kind and time.

:class:`RetryBackoff` computes retry delays (exponential, capped, with full jitter drawn
from an injectable random source); :func:`plan_failure` turns one failure into a
:class:`FailurePlan` (dead-letter it, or retry it at a given time). Nothing here reads a
clock or touches storage, so every rule is tested with plain inputs.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from dataclasses import dataclass

from ._exceptions import ErrorKind

__all__ = ["FailurePlan", "RetryBackoff", "plan_failure"]

# Jitter needs no secrecy, only independence from the app's own (possibly seeded) generator.
_jitter = _random.Random()  # noqa: S311


class RetryBackoff:
    """Exponential backoff with full jitter.

    Attempt ``n`` (1 for the first failure) waits a random time in
    ``[0, min(max_delay, base * factor ** (n - 1))]`` (full jitter spreads the retries of
    many clients that failed together). Without jitter the wait is the upper bound.

    Args:
        base: the ceiling after the first failure, in seconds.
        factor: how much the ceiling grows per further failure (at least 1).
        max_delay: the largest ceiling, in seconds.
        jitter: draw the wait uniformly below the ceiling (``True``, default) or use the
            ceiling itself.
        random: a source of floats in ``[0, 1)``; inject a fixed one in tests. By default a
            generator of the package's own, so an app's seeded ``random`` module is neither
            read nor advanced.

    Raises:
        ValueError: for a non-positive base, a factor below 1 or a max_delay below base.
    """

    def __init__(
        self,
        base: float = 1.0,
        factor: float = 2.0,
        max_delay: float = 3600.0,
        *,
        jitter: bool = True,
        random: Callable[[], float] | None = None,
    ) -> None:
        if not (math.isfinite(base) and base > 0):
            raise ValueError(f"base must be a positive number of seconds, not {base!r}")
        if not (math.isfinite(factor) and factor >= 1):
            raise ValueError(f"factor must be at least 1, not {factor!r}")
        if not (math.isfinite(max_delay) and max_delay >= base):
            raise ValueError(f"max_delay must be at least base ({base}), not {max_delay!r}")
        self.base = float(base)
        self.factor = float(factor)
        self.max_delay = float(max_delay)
        self.jitter = jitter
        self._random = random if random is not None else _jitter.random

    def ceiling(self, attempts: int) -> float:
        """The largest delay after ``attempts`` failures (``attempts >= 1``).

        Raises:
            ValueError: if ``attempts`` is below 1.
        """
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts!r}")
        # Compare exponents instead of computing factor**n, which overflows for large n.
        if self.factor > 1 and (attempts - 1) * math.log(self.factor) >= math.log(
            self.max_delay / self.base
        ):
            return self.max_delay
        return min(self.max_delay, self.base * self.factor ** (attempts - 1))

    def delay(self, attempts: int) -> float:
        """The delay before the next try after ``attempts`` failures, jittered if enabled."""
        ceiling = self.ceiling(attempts)
        if not self.jitter:
            return ceiling
        draw = self._random()
        return ceiling * min(max(draw, 0.0), 1.0)

    def __repr__(self) -> str:
        return (
            f"RetryBackoff(base={self.base!r}, factor={self.factor!r}, "
            f"max_delay={self.max_delay!r}, jitter={self.jitter!r})"
        )


@dataclass(frozen=True, slots=True)
class FailurePlan:
    """What to do with an op that failed."""

    attempts: int
    """The op's attempt count including this failure."""
    dead: bool
    """Move the op to the dead-letter state."""
    next_attempt_at: float
    """When the op may be sent again (meaningful when not dead)."""


def plan_failure(
    *,
    attempts: int,
    max_attempts: int,
    kind: ErrorKind,
    now: float,
    retry_after: float | None,
    policy: RetryBackoff,
) -> FailurePlan:
    """Decide the fate of an op that just failed.

    ``AUTH`` (the remote refused our credentials) is not a failure of the op: it counts no
    attempt, never dead-letters, and waits only ``retry_after`` if the remote gave one.
    ``PERMANENT`` and ``CONFLICT`` (an unresolved conflict) dead-letter at once; any other
    kind dead-letters when the attempt count reaches ``max_attempts``; otherwise
    (``RETRYABLE``) the op waits ``max(retry_after, backoff)`` seconds.

    Args:
        attempts: the op's attempt count before this failure.
        max_attempts: failures after which an op is dead-lettered.
        kind: how the failure was classified.
        now: the current time.
        retry_after: seconds the remote asked to wait, if it said.
        policy: the backoff policy.
    """
    if kind is ErrorKind.AUTH:
        return FailurePlan(
            attempts=attempts, dead=False, next_attempt_at=now + (retry_after or 0.0)
        )
    count = attempts + 1
    if kind in (ErrorKind.PERMANENT, ErrorKind.CONFLICT) or count >= max_attempts:
        return FailurePlan(attempts=count, dead=True, next_attempt_at=now)
    wait = max(retry_after or 0.0, policy.delay(count))
    return FailurePlan(attempts=count, dead=False, next_attempt_at=now + wait)
