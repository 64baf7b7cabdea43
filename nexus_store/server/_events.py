"""Server-sent events: tell a tenant's connected clients that new changes exist.

A client that keeps ``GET /v1/events`` open receives ``event: head`` with the tenant's
latest change sequence when it connects and each time that sequence grows; it then pulls
after its cursor. The events carry no data ("silent push"): a missed event only delays a
pull, it never loses a change.

**How new changes are detected.** Several server processes may share one PostgreSQL
database (or one SQLite file), and a push accepted by one must reach clients connected
to another. Each process runs one poller per tenant *that has listeners in this
process*, reading ``core.head(tenant)`` every ``interval`` seconds (one indexed
``max(seq)`` lookup), and checks at once when this process itself accepted a push for
the tenant. Polling was chosen over PostgreSQL ``LISTEN/NOTIFY`` because it works the
same on every storage (memory, SQLite shared by processes, PostgreSQL), needs no
dedicated connection per process, and cannot miss a notification across a reconnect;
the cost is at most ``interval`` seconds of delay for changes made by another process
and one cheap query per listened tenant per interval.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["ChangeNotifier", "EventStreamResponse", "Listener", "format_event"]

_log = logging.getLogger("nexus_store.server")


def format_event(head: int) -> bytes:
    """One ``head`` event in the text/event-stream format."""
    data = json.dumps({"head": head})
    return f"id: {head}\nevent: head\ndata: {data}\n\n".encode()


class Listener:
    """One connected client's view of a tenant's head."""

    def __init__(self, state: _TenantState) -> None:
        self._state = state

    @property
    def head(self) -> int:
        """The latest head seen (``-1`` before the first read)."""
        return self._state.head

    async def next_head(self, after: int, *, within: float) -> int | None:
        """Wait until the head is greater than ``after``.

        Returns:
            The new head, or ``None`` if ``within`` seconds passed first or the notifier
            closed (check :attr:`closed`).
        """
        with anyio.move_on_after(within):
            while self._state.head <= after and not self._state.closed:
                await self._state.changed.wait()
        if self._state.head > after and not self._state.closed:
            return self._state.head
        return None

    @property
    def closed(self) -> bool:
        """Whether the server is shutting down (the stream should end)."""
        return self._state.closed


@dataclass(eq=False)
class _TenantState:
    tenant: str
    head: int = -1
    listeners: int = 0
    closed: bool = False
    changed: anyio.Event = field(default_factory=anyio.Event)
    kick: anyio.Event = field(default_factory=anyio.Event)
    first_read: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def publish(self, head: int) -> None:
        if head > self.head:
            self.head = head
            changed, self.changed = self.changed, anyio.Event()
            changed.set()

    def close(self) -> None:
        self.closed = True
        self.changed.set()
        self.first_read.set()
        self.scope.cancel()


class ChangeNotifier:
    """Watches the heads of the tenants that have listeners in this process.

    Args:
        head: reads a tenant's latest change sequence (``core.head``).
        interval: seconds between two reads of a listened tenant's head.
    """

    def __init__(self, head: Callable[[str], Awaitable[int]], *, interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError("the polling interval must be positive")
        self._head = head
        self._interval = interval
        self._tenants: dict[str, _TenantState] = {}
        self._task_group: TaskGroup | None = None
        self._closed = False

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Own the pollers' task group for the app's lifetime; closes on exit."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            try:
                yield
            finally:
                self.close()
                self._task_group = None
                task_group.cancel_scope.cancel()

    def poke(self, tenant: str) -> None:
        """This process changed ``tenant``'s data: read its head now, if anyone listens."""
        state = self._tenants.get(tenant)
        if state is not None:
            state.kick.set()

    @asynccontextmanager
    async def listen(self, tenant: str) -> AsyncIterator[Listener]:
        """Register a listener for ``tenant``; its head is known once this enters.

        Raises:
            RuntimeError: the notifier is not running or already closed.
        """
        if self._task_group is None or self._closed:
            raise RuntimeError("the change notifier is not running")
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _TenantState(tenant)
            self._task_group.start_soon(self._poll, state)
        state.listeners += 1
        try:
            await state.first_read.wait()
            yield Listener(state)
        finally:
            state.listeners -= 1
            if state.listeners == 0 and self._tenants.get(tenant) is state:
                del self._tenants[tenant]
                state.scope.cancel()

    def close(self) -> None:
        """End every listener (server shutdown). Idempotent."""
        self._closed = True
        for state in list(self._tenants.values()):
            state.close()
        self._tenants.clear()

    async def _poll(self, state: _TenantState) -> None:
        with state.scope:
            while True:
                try:
                    state.publish(await self._head(state.tenant))
                except Exception:  # a storage outage must not end the stream; retry next tick
                    _log.warning("reading the head of a tenant failed", exc_info=True)
                state.first_read.set()
                with anyio.move_on_after(self._interval):
                    await state.kick.wait()
                state.kick = anyio.Event()


class EventStreamResponse(Response):
    """A ``text/event-stream`` response fed by a :class:`ChangeNotifier`.

    Sends the tenant's head at once, then each newer head, and a comment line every
    ``keepalive`` seconds of silence (so proxies keep the connection and a vanished
    client is noticed). Ends when the client disconnects or the server shuts down.

    Args:
        notifier: the notifier to listen to.
        tenant: the tenant whose head is streamed.
        keepalive: seconds of silence before a keep-alive comment.
        retry_ms: the reconnection delay suggested to clients.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        notifier: ChangeNotifier,
        tenant: str,
        *,
        keepalive: float = 15.0,
        retry_ms: int = 2000,
    ) -> None:
        self.status_code = 200
        self.background = None
        self._notifier = notifier
        self._tenant = tenant
        self._keepalive = keepalive
        self._retry_ms = retry_ms
        self.init_headers({"cache-control": "no-store", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until the client leaves or the server closes the notifier."""
        async with anyio.create_task_group() as task_group:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                task_group.cancel_scope.cancel()

            task_group.start_soon(watch_disconnect)
            with contextlib.suppress(OSError):  # the client went away mid-write
                await self._stream(send)
            task_group.cancel_scope.cancel()

    async def _stream(self, send: Send) -> None:
        async with self._notifier.listen(self._tenant) as listener:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            head = listener.head
            first = f"retry: {self._retry_ms}\n\n".encode() + format_event(max(head, 0))
            await send({"type": "http.response.body", "body": first, "more_body": True})
            while not listener.closed:
                newer = await listener.next_head(head, within=self._keepalive)
                if newer is not None:
                    head = newer
                    chunk = format_event(head)
                elif listener.closed:
                    break
                else:
                    chunk = b": keep-alive\n\n"
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
