"""Fan-out streams: every subscriber sees every published item, in order.

Used for status, event and progress streams. Each subscription has its own unbounded
buffer (status transitions and run events are few; a slow reader must not make a fast
one miss anything), is registered the moment it is created, and ends when the broadcast
is closed. Callbacks are called synchronously at publish time.

A broadcast belongs to one event loop: publish from that loop's thread (code in another
thread goes through the service's blocking portal). Callbacks may be added from anywhere.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Generic, Self, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["Broadcast", "BufferedStream", "Subscription"]

T = TypeVar("T")


class BufferedStream(Generic[T]):
    """An async iterator over the items handed to it, buffered without bound.

    After :meth:`close` (or the source ending it) the buffered items are still read, then
    iteration stops. Subclasses say how to stop receiving in :meth:`_detach`.
    """

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items: collections.deque[T] = collections.deque(items)
        self._ended = False
        self._waiter: anyio.Event | None = None

    def _put(self, item: T) -> None:
        if self._ended:
            return
        self._items.append(item)
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def _detach(self) -> None:
        """Stop the source from handing over more items."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = anyio.Event()
            await self._waiter.wait()
        await anyio.lowlevel.checkpoint()
        return self._items.popleft()

    def pending(self) -> int:
        """Items received but not yet read."""
        return len(self._items)

    def close(self) -> None:
        """Stop receiving; items already buffered can still be read."""
        self._detach()
        self._end()

    async def aclose(self) -> None:
        """Async form of :meth:`close`."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Subscription(BufferedStream[T]):
    """One reader of a :class:`Broadcast`: an async iterator; ``close()`` to stop reading."""

    def __init__(self, owner: Broadcast[T]) -> None:
        super().__init__()
        self._owner = owner

    def _detach(self) -> None:
        self._owner._remove(self)


class Broadcast(Generic[T]):
    """A multi-subscriber stream of ``T``.

    Args:
        replay_last: a new subscriber first receives the most recent item (for status
            streams: a late subscriber learns the current state).
    """

    def __init__(self, *, replay_last: bool = False) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription[T]] = []
        self._callbacks: list[Callable[[T], None]] = []
        self._replay_last = replay_last
        self._last: list[T] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def last(self) -> T | None:
        """The most recently published item, if any."""
        with self._lock:
            return self._last[0] if self._last else None

    def subscribe(self) -> Subscription[T]:
        """A new subscription, registered now: it sees every item published from now on."""
        subscription = Subscription(self)
        with self._lock:
            if self._replay_last and self._last:
                subscription._put(self._last[0])
            if self._closed:
                subscription._end()
            else:
                self._subscriptions.append(subscription)
        return subscription

    def add_callback(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Call ``callback(item)`` on every publish; returns a function that removes it."""
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def publish(self, item: T) -> None:
        """Hand ``item`` to every subscriber and callback. Ignored after :meth:`close`."""
        with self._lock:
            if self._closed:
                return
            self._last[:] = [item]
            subscriptions = list(self._subscriptions)
            callbacks = list(self._callbacks)
        for subscription in subscriptions:
            subscription._put(item)
        for callback in callbacks:
            callback(item)

    def close(self) -> None:
        """End every subscription (after its buffered items). Idempotent."""
        with self._lock:
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription._end()

    def _remove(self, subscription: Subscription[T]) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
