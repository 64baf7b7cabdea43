"""The event loop that runs async work for synchronous callers, in a daemon thread.

``store.sync()``, ``backend.close()`` and :class:`~nexus_store.sync.BackgroundSyncThread`
run their async parts on one process-wide loop (:func:`shared_loop`), started on first
use and stopped at interpreter exit after everything that uses it was closed (see
:mod:`._unclosed`). One loop for all of them means a backend's connections, which belong
to the loop that opened them, can be shared by several stores and a background thread,
and closed from plain synchronous code at any time.

The thread is a daemon: a program that forgets to close something never waits for it at
exit. :class:`LoopBinding` remembers which loop a backend's connections belong to, so
that its blocking ``close()`` runs ``aclose()`` there (:func:`close_on_bound_loop`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.from_thread import BlockingPortal

from . import _unclosed
from ._exceptions import LifecycleError

__all__ = [
    "LoopBinding",
    "LoopThread",
    "close_on_bound_loop",
    "current_binding",
    "in_event_loop",
    "shared_loop",
]

R = TypeVar("R")
T = TypeVar("T")

STOP_TIMEOUT = 5.0
"""Seconds a loop is given to end its tasks when stopped (at exit: to keep exit prompt)."""


def in_event_loop() -> bool:
    """Whether the calling thread is running an async event loop (asyncio or trio).

    Also true outside any task while an asyncio loop runs (a callback, or a finalizer the
    garbage collector ran there), where anyio cannot tell.
    """
    try:
        anyio.lowlevel.current_token()
    except RuntimeError:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
    return True


@dataclass(frozen=True)
class LoopBinding:
    """The event loop (its thread, its process) that some connections belong to."""

    token: anyio.lowlevel.EventLoopToken
    thread_id: int
    pid: int


def current_binding() -> LoopBinding:
    """The binding of the running loop (call it from async code)."""
    return LoopBinding(anyio.lowlevel.current_token(), threading.get_ident(), os.getpid())


class LoopThread:
    """An event loop in a daemon thread, reached from other threads through a portal.

    Args:
        name: the thread's name.
        backend: the anyio backend (``"asyncio"`` or ``"trio"``).
    """

    def __init__(self, name: str, backend: str = "asyncio") -> None:
        self.name = name
        self.backend = backend
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        """Whether the loop runs (started and not stopped)."""
        return self._portal is not None

    @property
    def thread_id(self) -> int | None:
        """The loop thread's id, while it runs."""
        thread = self._thread
        return thread.ident if thread is not None else None

    def on_loop_thread(self) -> bool:
        """Whether the caller is this loop's own thread."""
        return self._thread is not None and threading.get_ident() == self._thread.ident

    def binding(self) -> LoopBinding | None:
        """This loop's binding, while it runs."""
        thread_id, token = self.thread_id, self._token
        if thread_id is None or token is None:
            return None
        return LoopBinding(token, thread_id, os.getpid())

    def start(self) -> BlockingPortal:
        """Start the loop (if not yet running) and return its portal.

        Raises:
            LifecycleError: the loop was stopped (a loop thread starts once).
        """
        with self._lock:
            if self._portal is not None:
                return self._portal
            if self._stopped:
                raise LifecycleError(f"the {self.name} event loop is stopped")
            ready: concurrent.futures.Future[
                tuple[BlockingPortal, anyio.lowlevel.EventLoopToken]
            ] = concurrent.futures.Future()
            thread = threading.Thread(target=self._run, args=(ready,), name=self.name, daemon=True)
            thread.start()
            self._portal, self._token = ready.result()
            self._thread = thread
            return self._portal

    def _run(
        self,
        ready: concurrent.futures.Future[tuple[BlockingPortal, anyio.lowlevel.EventLoopToken]],
    ) -> None:
        async def main() -> None:
            async with BlockingPortal() as portal:
                ready.set_result((portal, anyio.lowlevel.current_token()))
                await portal.sleep_until_stopped()

        _unclosed.mark_loop_thread(threading.get_ident(), running=True)
        try:
            anyio.run(main, backend=self.backend)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            _unclosed.mark_loop_thread(threading.get_ident(), running=False)

    def _check_caller(self) -> BlockingPortal:
        portal = self._portal
        if portal is None:
            portal = self.start()
        if self.on_loop_thread():
            raise LifecycleError(
                f"a blocking call was made on the {self.name} event loop's own thread "
                "(from a callback or async code): use the async form instead"
            )
        return portal

    def call(
        self, func: Callable[..., Coroutine[Any, Any, R]], *args: Any, timeout: float | None = None
    ) -> R:
        """Run ``func(*args)`` on the loop and wait for its result (starting the loop).

        An interrupt (Ctrl-C) or a ``timeout`` while waiting cancels the call.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            LifecycleError: called from the loop's own thread, or the loop was stopped.
        """
        portal = self._check_caller()
        future: concurrent.futures.Future[R] = portal.start_task_soon(func, *args)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def hold(
        self, manager: AbstractAsyncContextManager[T], *, timeout: float | None = None
    ) -> tuple[T, Callable[[float | None], None]]:
        """Enter an async context manager on the loop and keep it entered.

        Returns:
            What ``__aenter__`` returned, and a function that exits it (waiting at most
            the given seconds; ``None``: no limit). Exiting twice does nothing.
        """
        portal = self._check_caller()

        async def keep(*, task_status: anyio.abc.TaskStatus[tuple[T, anyio.Event]]) -> None:
            release = anyio.Event()
            async with manager as value:
                task_status.started((value, release))
                await release.wait()

        future, (value, release) = portal.start_task(keep)
        done = threading.Lock()

        def leave(wait: float | None) -> None:
            if not done.acquire(blocking=False):
                return
            if not future.done():
                self._check_caller().call(release.set)
            try:
                future.result(wait)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise

        return value, leave

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the loop: cancel what still runs there, wait at most ``timeout`` seconds.

        Idempotent; a stopped loop does not start again.
        """
        with self._lock:
            portal, thread = self._portal, self._thread
            self._portal = self._token = None
            self._stopped = True
        if portal is None or thread is None or not thread.is_alive():
            return  # never started, already ended, or inherited through fork() (no thread)
        if threading.get_ident() == thread.ident:
            raise LifecycleError(f"the {self.name} event loop cannot stop itself")
        # Cancelled along with the rest, or the loop already ended: either way it stops.
        with contextlib.suppress(
            concurrent.futures.CancelledError, concurrent.futures.TimeoutError, RuntimeError
        ):
            portal.start_task_soon(portal.stop, True).result(timeout)
        thread.join(timeout)


_ENDED = (
    "{what}: the event loop its connections belong to has ended; close it inside that "
    "loop (`async with`, or `await aclose()`) before the loop ends"
)

_shared: LoopThread | None = None
_shared_lock = threading.Lock()
_shared_pid = os.getpid()


def shared_loop() -> LoopThread:
    """The process-wide loop for synchronous callers (stopped at exit, after the resources
    that use it were closed)."""
    global _shared, _shared_pid
    with _shared_lock:
        if _shared is None or _shared._stopped or _shared_pid != os.getpid():
            loop = LoopThread("nexus-store loop")
            _shared, _shared_pid = loop, os.getpid()
            # The loop thread itself is no resource of the app's: no warning, closed last.
            _unclosed.track(loop, loop.stop, "the nexus-store event loop", warn=False, last=True)
        return _shared


def close_on_bound_loop(
    aclose: Callable[[], Coroutine[Any, Any, None]],
    binding: LoopBinding | None,
    *,
    what: str,
    timeout: float | None = None,
) -> None:
    """Run ``aclose()`` on the loop its connections belong to and wait for it.

    Args:
        aclose: the async close.
        binding: the loop the connections belong to (``None``: none were opened).
        what: the resource, for messages.
        timeout: the most seconds to wait on the shared loop (``None``: no limit).

    Raises:
        LifecycleError: called on that loop's own thread (use ``await aclose()`` there),
            or that loop has ended (its connections ended with it).
    """
    if binding is not None and binding.pid != os.getpid():
        return  # a forked child: the connections (and their loop) are the parent's
    if binding is None:
        if not in_event_loop():
            try:
                anyio.run(aclose)
            except RuntimeError as exc:
                # anyio also goes by the context's async library marker, which a finalizer
                # run by the collector can inherit with no loop running: it refuses to
                # start one before calling aclose, so the shared loop does the close.
                if not str(exc).startswith("Already running"):
                    raise
            else:
                return
        shared_loop().call(aclose, timeout=timeout)
        return
    if binding.thread_id == threading.get_ident():
        if in_event_loop():
            raise LifecycleError(
                f"{what}.close() was called on the event loop it uses: await its aclose() "
                "(or use `async with`) there instead"
            )
        raise LifecycleError(_ENDED.format(what=what))
    shared = _shared
    if shared is not None and shared.thread_id == binding.thread_id:
        shared.call(aclose, timeout=timeout)
        return
    try:
        anyio.from_thread.run(aclose, token=binding.token)
    except RuntimeError as exc:  # the loop is closed or gone
        raise LifecycleError(_ENDED.format(what=what)) from exc
