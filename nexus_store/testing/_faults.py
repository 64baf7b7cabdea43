"""FaultyBackend: wraps any backend and makes it fail on cue, for tests of sync runs.

Faults are scripted per call (:meth:`FaultyBackend.fail_next_push`, or the
``push_faults``/``pull_faults`` arguments) or drawn by probability from a seeded random
generator, so a failing run replays exactly. The fault that matters most for an
offline-first client is :attr:`FaultKind.DROP_RESPONSE`: the inner backend *applied* the
batch, then the answer is lost (:class:`~nexus_store.NetworkError`); the client must
resend the same op ids and the server must not apply them twice.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import anyio

from .._exceptions import (
    AuthError,
    NetworkError,
    PermanentError,
    RateLimitedError,
    RemoteError,
    ServerUnavailableError,
)
from .._remote import Changes, PushResult, RemoteBackend, RemoteOp

__all__ = ["Fault", "FaultKind", "FaultyBackend", "InjectedFault"]

Verb = Literal["push", "pull"]


class FaultKind(StrEnum):
    """What goes wrong in one call."""

    DROP_RESPONSE = "drop_response"
    """The inner backend ran the call, then the answer was lost: ``NetworkError``."""
    NETWORK = "network"
    """The request never arrived: ``NetworkError``; nothing was applied."""
    UNAVAILABLE = "unavailable"
    """The server is down (HTTP 503): ``ServerUnavailableError``; nothing was applied."""
    SERVER_ERROR = "server_error"
    """The server failed on this request (HTTP 500): ``ServerUnavailableError``; nothing
    was applied."""
    RATE_LIMITED = "rate_limited"
    """The server asked to slow down (HTTP 429): ``RateLimitedError``; nothing applied."""
    PERMANENT = "permanent"
    """The request can never succeed: ``PermanentError``; nothing was applied."""
    AUTH = "auth"
    """Credentials refused: ``AuthError``; nothing was applied."""
    DELAY = "delay"
    """The call succeeds after ``Fault.seconds`` more seconds."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault (use the class methods to build them)."""

    kind: FaultKind
    retry_after: float | None = None
    seconds: float = 0.0
    message: str = "injected fault"
    status: int | None = None
    """The HTTP status a server error stands for (``UNAVAILABLE``: 503, ``SERVER_ERROR``: 500)."""

    @classmethod
    def drop_response(cls) -> Fault:
        """Apply the call on the inner backend, then lose the answer."""
        return cls(FaultKind.DROP_RESPONSE, message="injected: response lost after apply")

    @classmethod
    def network(cls) -> Fault:
        """Fail before the request reaches the inner backend."""
        return cls(FaultKind.NETWORK, message="injected: connection failed")

    @classmethod
    def unavailable(cls, retry_after: float | None = None) -> Fault:
        """The server is down (503), optionally with a retry-after."""
        return cls(
            FaultKind.UNAVAILABLE, retry_after, message="injected: server unavailable", status=503
        )

    @classmethod
    def server_error(cls) -> Fault:
        """The server failed while handling the request (500): what was sent may be why."""
        return cls(FaultKind.SERVER_ERROR, message="injected: server error", status=500)

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1.0) -> Fault:
        """A rate-limit answer with a retry-after."""
        return cls(FaultKind.RATE_LIMITED, retry_after, message="injected: rate limited")

    @classmethod
    def permanent(cls, message: str = "injected: permanent failure") -> Fault:
        """A permanent failure of the whole request."""
        return cls(FaultKind.PERMANENT, message=message)

    @classmethod
    def auth(cls) -> Fault:
        """Refused credentials."""
        return cls(FaultKind.AUTH, message="injected: credentials refused")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer normally, ``seconds`` later."""
        return cls(FaultKind.DELAY, seconds=seconds)

    def error(self) -> RemoteError:
        """The exception this fault raises (``DELAY`` raises none; this is unused then)."""
        if self.kind in (FaultKind.DROP_RESPONSE, FaultKind.NETWORK):
            return NetworkError(self.message)
        if self.kind in (FaultKind.UNAVAILABLE, FaultKind.SERVER_ERROR):
            return ServerUnavailableError(
                self.message, retry_after=self.retry_after, status=self.status
            )
        if self.kind is FaultKind.RATE_LIMITED:
            return RateLimitedError(self.message, retry_after=self.retry_after)
        if self.kind is FaultKind.AUTH:
            return AuthError(self.message)
        return PermanentError(self.message)


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """A fault that was injected: on which call of which verb."""

    verb: Verb
    call: int
    """The call's number for its verb, from 1."""
    fault: Fault


class FaultyBackend(RemoteBackend):
    """A backend that fails on cue around a real one.

    For each call the next scripted fault of its verb is used (``None`` in a script means
    "no fault this call"); once a script is used up, faults are drawn by probability.

    Args:
        inner: the backend that does the work.
        push_faults: faults for the next pushes, in order.
        pull_faults: faults for the next pulls, in order.
        drop_response: the probability that a push is applied and its answer lost.
        network_error: the probability that a push fails before it is sent.
        unavailable: the probability that a push fails with a retryable server error.
        permanent: the probability that a push fails with a permanent error.
        pull_error: the probability that a pull fails with a network error.
        delay: seconds added to every call (latency).
        seed: seeds the random generator, so a run's faults replay exactly.
    """

    def __init__(
        self,
        inner: RemoteBackend,
        *,
        push_faults: Iterable[Fault | None] = (),
        pull_faults: Iterable[Fault | None] = (),
        drop_response: float = 0.0,
        network_error: float = 0.0,
        unavailable: float = 0.0,
        permanent: float = 0.0,
        pull_error: float = 0.0,
        delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        rates = (drop_response, network_error, unavailable, permanent, pull_error, delay)
        if any(r < 0 for r in rates) or drop_response + network_error + unavailable + permanent > 1:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1 per call")
        if pull_error > 1:
            raise ValueError("pull_error is a probability (at most 1)")
        self.inner = inner
        self.writer_aware = inner.writer_aware  # writer ids go through as they are
        self._scripts: dict[Verb, deque[Fault | None]] = {
            "push": deque(push_faults),
            "pull": deque(pull_faults),
        }
        self._push_rates = (
            (drop_response, Fault.drop_response()),
            (network_error, Fault.network()),
            (unavailable, Fault.unavailable()),
            (permanent, Fault.permanent()),
        )
        self._pull_rate = pull_error
        self._delay = delay
        self._random = random.Random(seed)  # noqa: S311 - reproducible faults, not security
        self.calls: dict[Verb, int] = {"push": 0, "pull": 0}
        """How many calls each verb received."""
        self.injected: list[InjectedFault] = []
        """Every fault injected, in order."""
        self.dropped: list[PushResult] = []
        """The answers of pushes that were applied and then "lost" (what the client missed)."""

    def fail_next_push(self, *faults: Fault | None) -> None:
        """Queue faults for the next pushes (after those already scripted)."""
        self._scripts["push"].extend(faults)

    def fail_next_pull(self, *faults: Fault | None) -> None:
        """Queue faults for the next pulls (after those already scripted)."""
        self._scripts["pull"].extend(faults)

    def _next_fault(self, verb: Verb) -> Fault | None:
        script = self._scripts[verb]
        if script:
            return script.popleft()
        roll = self._random.random()
        if verb == "pull":
            return Fault.network() if roll < self._pull_rate else None
        for rate, fault in self._push_rates:
            if roll < rate:
                return fault
            roll -= rate
        return None

    async def _begin(self, verb: Verb) -> Fault | None:
        self.calls[verb] += 1
        fault = self._next_fault(verb)
        if fault is not None:
            self.injected.append(InjectedFault(verb, self.calls[verb], fault))
        wait = self._delay + (fault.seconds if fault is not None else 0.0)
        if wait > 0:
            await anyio.sleep(wait)  # simulated latency, not waiting for work
        if fault is not None and fault.kind not in (FaultKind.DROP_RESPONSE, FaultKind.DELAY):
            raise fault.error()
        return fault

    async def push(self, ops: Sequence[RemoteOp], *, writer: int | None = None) -> PushResult:
        """Push through the inner backend unless a fault says otherwise."""
        fault = await self._begin("push")
        if writer is None:
            result = await self.inner.push(ops)
        else:
            result = await self.inner.push(ops, writer=writer)
        if fault is not None and fault.kind is FaultKind.DROP_RESPONSE:
            self.dropped.append(result)
            raise fault.error()
        return result

    async def pull(
        self,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
        skip_writer: int | None = None,
    ) -> Changes:
        """Pull through the inner backend unless a fault says otherwise."""
        fault = await self._begin("pull")
        if skip_writer is None:
            changes = await self.inner.pull(cursor, limit, collections=collections)
        else:
            changes = await self.inner.pull(
                cursor, limit, collections=collections, skip_writer=skip_writer
            )
        if fault is not None and fault.kind is FaultKind.DROP_RESPONSE:
            raise fault.error()
        return changes

    async def aclose(self) -> None:
        """Close the inner backend."""
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"FaultyBackend({self.inner!r})"
