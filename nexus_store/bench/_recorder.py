"""What one client process of a sync load run counts, and the backend wrapper that counts it.

:class:`TimedBackend` wraps each simulated client's :class:`~nexus_store.backends.HttpBackend`
(through the public seam: a :class:`~nexus_store._remote.RemoteBackend` of its own) and
tells the process's :class:`Recorder` the latency and outcome of every push and pull.
Only what happens inside the measured window counts for latencies and error rates; acks
are counted per second over the whole run (the throughput timeline) and per op (which of
a client's items the server acknowledged, to be checked against the server afterwards).
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx

from .._exceptions import (
    AuthError,
    NetworkError,
    PermanentError,
    ProtocolError,
    RateLimitedError,
    RemoteError,
    ServerUnavailableError,
)
from .._remote import Changes, OpStatus, PushResult, RemoteBackend, RemoteOp
from ..backends import HttpBackend

__all__ = ["ERROR_KINDS", "Recorder", "TimedBackend", "error_kind", "item_id", "parse_item_id"]

ERROR_KINDS = ("429", "5xx", "timeout", "connection", "protocol", "auth", "4xx", "other")
"""How failed requests are counted, in the order they are printed."""


def item_id(client: int, seq: int) -> str:
    """The id of a client's ``seq``-th item (unique within a run)."""
    return f"c{client:05d}-{seq:09d}"


def parse_item_id(value: object) -> tuple[int, int] | None:
    """``(client, seq)`` of an id made by :func:`item_id` (``None``: not one of ours)."""
    if not isinstance(value, str) or len(value) != 16 or value[0] != "c" or value[6] != "-":
        return None
    try:
        return int(value[1:6]), int(value[7:])
    except ValueError:
        return None


def error_kind(exc: BaseException) -> str:
    """The kind a failed request is counted under (see :data:`ERROR_KINDS`)."""
    if isinstance(exc, RateLimitedError):
        return "429"
    if isinstance(exc, ServerUnavailableError):
        return "5xx"
    if isinstance(exc, NetworkError):
        cause = exc.__cause__
        timed_out = isinstance(cause, httpx.TimeoutException | TimeoutError)
        return "timeout" if timed_out or "timed out" in str(exc) else "connection"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, PermanentError):
        return "4xx"
    return "other"


class Recorder:
    """The counts of one client process (see the module docstring).

    Args:
        start: the wall-clock time the load started (shared by every process).
        window: the measured window, seconds after ``start``: ``(begin, end)``.
    """

    def __init__(self, start: float, window: tuple[float, float]) -> None:
        self.start = start
        self.window = window
        self.push_ms: list[float] = []
        self.pull_ms: list[float] = []
        self.poke_ms: list[float] = []
        self.critical_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        """Failed requests in the window, by kind."""
        self.errors_all: Counter[str] = Counter()
        self.requests = 0
        """Requests (push and pull) sent in the window."""
        self.pushes = 0
        self.pulls = 0
        self.pulled = 0
        self.acked_at: Counter[int] = Counter()
        """Ops acknowledged, per whole second since ``start``."""
        self.errors_at: Counter[int] = Counter()
        self.ops_status: Counter[str] = Counter()
        self.acked: dict[int, bytearray] = {}
        """Per client, one bit per item seq: acknowledged by the server."""
        self.probes: dict[str, float] = {}
        """Item ids of ``CRITICAL`` probes in flight, with the time they were saved."""
        self.saved = 0
        self.saved_at: Counter[int] = Counter()

    def now(self) -> float:
        """Seconds since the load started."""
        return time.time() - self.start

    def in_window(self, t: float) -> bool:
        """Whether ``t`` (seconds since the start) is inside the measured window."""
        return self.window[0] <= t < self.window[1]

    def note_saved(self, count: int) -> None:
        """``count`` ops were saved (queued) now."""
        self.saved += count
        self.saved_at[int(self.now())] += count

    def note_push(self, ops: Sequence[RemoteOp], result: PushResult, seconds: float) -> None:
        """A push was answered after ``seconds``."""
        t = self.now()
        if self.in_window(t):
            self.push_ms.append(seconds * 1000)
            self.pushes += 1
            self.requests += 1
        accepted = 0
        for op, answer in zip(ops, result.results, strict=False):
            self.ops_status[answer.status.value] += 1
            if answer.status is not OpStatus.ACCEPTED:
                continue
            accepted += 1
            saved_at = self.probes.pop(str(op.item_id), None)
            if saved_at is not None and self.in_window(saved_at - self.start):
                self.critical_ms.append((time.time() - saved_at) * 1000)
            parsed = parse_item_id(op.item_id)
            if parsed is not None:
                client, seq = parsed
                bits = self.acked.setdefault(client, bytearray())
                if len(bits) <= seq // 8:
                    bits.extend(b"\0" * (seq // 8 + 1 - len(bits) + 64))
                bits[seq // 8] |= 1 << (seq % 8)
        self.acked_at[int(t)] += accepted

    def note_pull(self, changes: Changes, seconds: float) -> None:
        """A pull was answered after ``seconds``."""
        if self.in_window(self.now()):
            self.pull_ms.append(seconds * 1000)
            self.pulls += 1
            self.requests += 1
            self.pulled += len(changes.changes)

    def note_poke(self, seconds: float) -> None:
        """An event stream delivered its first event ``seconds`` after it was opened."""
        if self.in_window(self.now()):
            self.poke_ms.append(seconds * 1000)

    def note_error(self, exc: BaseException) -> None:
        """A request failed."""
        kind = error_kind(exc)
        t = self.now()
        self.errors_all[kind] += 1
        self.errors_at[int(t)] += 1
        if self.in_window(t):
            self.errors[kind] += 1
            self.requests += 1

    def to_json(self) -> dict[str, Any]:
        """Everything counted, as JSON (bitmaps in base64)."""
        return {
            "push_ms": self.push_ms,
            "pull_ms": self.pull_ms,
            "poke_ms": self.poke_ms,
            "critical_ms": self.critical_ms,
            "errors": dict(self.errors),
            "errors_all": dict(self.errors_all),
            "requests": self.requests,
            "pushes": self.pushes,
            "pulls": self.pulls,
            "pulled": self.pulled,
            "acked_at": {str(k): v for k, v in self.acked_at.items()},
            "errors_at": {str(k): v for k, v in self.errors_at.items()},
            "saved_at": {str(k): v for k, v in self.saved_at.items()},
            "ops_status": dict(self.ops_status),
            "saved": self.saved,
            "acked": {
                str(client): base64.b64encode(bytes(bits)).decode()
                for client, bits in self.acked.items()
            },
        }


class TimedBackend(RemoteBackend):
    """An :class:`HttpBackend` whose requests are timed and counted by a :class:`Recorder`.

    A call made while the backend is paused by a ``Retry-After`` sends nothing, so it is
    not counted as a request.
    """

    def __init__(self, inner: HttpBackend, recorder: Recorder) -> None:
        self.inner = inner
        self.base_url = inner.base_url
        self.writer_aware = inner.writer_aware  # writer ids go through as they are
        self._recorder = recorder

    async def push(self, ops: Sequence[RemoteOp], *, writer: int | None = None) -> PushResult:
        """Push through the wrapped backend, timing it."""
        paused = self.inner.paused_for > 0
        started = time.perf_counter()
        try:
            result = await self.inner.push(ops, writer=writer)
        except RemoteError as exc:
            if not paused:
                self._recorder.note_error(exc)
            raise
        self._recorder.note_push(ops, result, time.perf_counter() - started)
        return result

    async def pull(
        self,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
        skip_writer: int | None = None,
    ) -> Changes:
        """Pull through the wrapped backend, timing it."""
        paused = self.inner.paused_for > 0
        started = time.perf_counter()
        try:
            changes = await self.inner.pull(
                cursor, limit, collections=collections, skip_writer=skip_writer
            )
        except RemoteError as exc:
            if not paused:
                self._recorder.note_error(exc)
            raise
        self._recorder.note_pull(changes, time.perf_counter() - started)
        return changes

    @property
    def server_clock(self) -> Any:
        """The wrapped backend's reading of the server's clock."""
        return self.inner.server_clock

    async def aclose(self) -> None:
        """Close the wrapped backend."""
        await self.inner.aclose()
