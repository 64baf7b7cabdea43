"""Other devices' edits without waiting: the server's pokes, network changes, wakes.

**Pokes.** Once the first sync run has ended, while the service runs, the sync is switched
on, the remote is not paused and the device meets the config's network constraint, the
service holds the backend's events
stream open (``backend.watch()``: the server sends the tenant's change head on connect and
each time it grows; the analogue of a silent push). A head beyond a synced collection's
pull cursor is a poke: the service asks for an expedited run at once, whose pull brings
the change in (the run also sends whatever is queued). A poke that arrives while a run is
in progress asks for one more run after it, so a change that landed after that run's
pull is not left waiting for the periodic run; a poke the run's own pull already covered
(the echo of its own push, typically) asks for nothing. The stream reconnects after a failure
with an exponential backoff with full jitter (1 s doubling, at most 60 s; a remote's
``Retry-After`` is honoured), and closes when the device loses the network the config
requires (it reopens when the network is back). A backend without ``watch()`` (memory,
PostgreSQL) has no stream; nothing changes then.

**Network changes and wakes.** A device provider may report them (``poll_events()``, looked
at every few seconds, as :class:`~.device.SystemDevice` does through psutil and the clocks;
or ``subscribe_events(callback)``, as :class:`~.device.SimulatedDevice` does on
``simulate_network_change()`` / ``simulate_resume()``). On either, the service asks for
an expedited run if any op is queued, re-probes reachability, and reopens a closed events
stream at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import anyio.to_thread

from .._backoff import RetryBackoff
from .._exceptions import NexusStoreError, RemoteError, StoreClosedError
from .._priority import SyncPriority
from ._config import ServiceState
from ._triggers import _Triggering

__all__ = ["poke_wants_pull"]

logger = logging.getLogger("nexus_store.sync.service")

EVENTS_POLL_INTERVAL = 5.0
"""Seconds between two looks for network changes and wakes (a reading costs about 1 ms)."""
_STREAM_BACKOFF = RetryBackoff(base=1.0, factor=2.0, max_delay=60.0)
_IDLE_RECHECK = 60.0
"""While the stream may not open, look again at least this often (seconds)."""


def poke_wants_pull(head: int, cursors: Sequence[int]) -> bool:
    """Whether the server's change ``head`` is beyond some synced collection's cursor."""
    return any(head > cursor for cursor in cursors)


class _Pokes(_Triggering):
    """The events stream, and runs asked for by pokes, network changes and wakes."""

    _stream_changed: anyio.Event | None = None
    _repull: bool = False
    _pokes_seen: int = 0
    _unsubscribe_events: Callable[[], None] | None = None

    # -- wiring -----------------------------------------------------------------------------

    def _start_pokes(self, tg: anyio.abc.TaskGroup) -> None:
        """Start following the stream and the device's events (from ``__aenter__``)."""
        self._stream_changed = anyio.Event()
        self._first_run = anyio.Event()
        if self._config.follow_pokes and callable(getattr(self._backend, "watch", None)):
            tg.start_soon(self._follow_pokes)
        subscribe = getattr(self._device, "subscribe_events", None)
        if callable(subscribe):
            self._unsubscribe_events = subscribe(self._on_device_event)
        elif callable(getattr(self._device, "poll_events", None)):
            tg.start_soon(self._poll_device_events)

    def _stop_pokes(self) -> None:
        if self._unsubscribe_events is not None:
            self._unsubscribe_events()
            self._unsubscribe_events = None

    def _stream_news(self) -> None:
        """Something the stream depends on changed (device, switches): look again."""
        if self._stream_scope is not None and not self._stream_allowed():
            self._stream_scope.cancel()
        if self._stream_changed is not None:
            changed, self._stream_changed = self._stream_changed, anyio.Event()
            changed.set()

    @property
    def pokes_seen(self) -> int:
        """How many pokes (heads beyond a cursor) the events stream brought so far."""
        return self._pokes_seen

    # -- the stream ---------------------------------------------------------------------------

    def _stream_allowed(self) -> bool:
        if self._state is not ServiceState.RUNNING or not self._config.enabled:
            return False
        if not self._sync_enabled:
            return False
        try:
            state = self._device.current()
        except Exception:  # a probe failing is an answer, not a crash
            return False
        return state.satisfies_network(self._config.effective_network_type)

    async def _wait_for_news(self, seconds: float) -> None:
        assert self._stream_changed is not None
        with anyio.move_on_after(seconds):
            await self._stream_changed.wait()

    async def _follow_pokes(self) -> None:
        # The first exchange with the remote is a sync run's, so that what it finds (refused
        # credentials, a pause) is reported by the run, as it was before there was a stream.
        assert self._first_run is not None
        await self._first_run.wait()
        failures = 0
        while True:
            if not self._stream_allowed():
                await self._wait_for_news(_IDLE_RECHECK)
                continue
            paused = await anyio.to_thread.run_sync(self._remote_pause)
            if paused is not None and paused.until > self._clock.now():
                await self._wait_for_news(min(_IDLE_RECHECK, paused.until - self._clock.now()))
                continue
            retry_after: float | None = None
            try:
                failures = await self._hold_stream(failures)
            except RemoteError as exc:
                retry_after = exc.retry_after
                logger.info("the events stream failed (%s: %s)", type(exc).__name__, exc)
            except StoreClosedError:
                return
            except NexusStoreError:
                logger.exception("following the events stream failed")
            if not self._stream_allowed():
                continue
            failures += 1
            delay = max(retry_after or 0.0, _STREAM_BACKOFF.delay(failures))
            await self._wait_for_news(delay)

    async def _hold_stream(self, failures: int) -> int:
        """Hold the stream open while allowed; return the failure count to go on with."""
        watch = self._backend.watch  # type: ignore[union-attr]
        with anyio.CancelScope() as scope:
            self._stream_scope = scope  # cancelled by _stream_news when no longer allowed
            try:
                async with watch() as heads:
                    logger.debug("events stream open")
                    async for head in heads:
                        failures = 0  # connected and answering
                        await self._on_head(int(head))
            finally:
                self._stream_scope = None
        return failures

    _stream_scope: anyio.CancelScope | None = None

    async def _cursors(self) -> list[int]:
        return await anyio.to_thread.run_sync(
            lambda: [target.pull_cursor() for target in self._targets]
        )

    async def _on_head(self, head: int) -> None:
        self._poked_head = max(self._poked_head, head)
        if self._active_runs:
            # The run in progress may pull it (its own push's echo, typically): look again
            # when it ends (:meth:`_after_run`).
            self._repull = True
            return
        cursors = await self._cursors()
        if not poke_wants_pull(head, cursors):
            return
        self._pokes_seen += 1
        logger.debug("poke: head %d beyond a cursor (%s)", head, cursors)
        await self._ask_for_pull()

    _poked_head: int = -1

    async def _pull_if_behind(self) -> None:
        if poke_wants_pull(self._poked_head, await self._cursors()):
            self._pokes_seen += 1
            await self._ask_for_pull()

    async def _ask_for_pull(self) -> None:
        if self._active_runs:
            self._repull = True  # the run in progress may have pulled already
            return
        try:
            await self._request_run(SyncPriority.CRITICAL)
            self._update_scheduled(await self._has_schedule())
        except NexusStoreError:
            logger.exception("asking for a run after a poke failed")

    _first_run: anyio.Event | None = None

    def _after_run(self) -> None:
        """A run ended: one more if a poke came during it."""
        if self._first_run is not None:
            self._first_run.set()
        if self._repull and self._tg is not None and self._state is ServiceState.RUNNING:
            self._repull = False
            self._tg.start_soon(self._pull_if_behind)

    # -- network changes and wakes -------------------------------------------------------------

    def _on_device_event(self, kind: str) -> None:
        if self._state is ServiceState.RUNNING and self._tg is not None:
            tg = self._tg

            def start() -> None:
                tg.start_soon(self._device_event, kind)

            self._call_in_loop(start)

    async def _poll_device_events(self) -> None:
        poll = getattr(self._device, "poll_events", None)
        assert callable(poll)
        while True:
            await self._clock.sleep(EVENTS_POLL_INTERVAL)
            kinds = await anyio.to_thread.run_sync(poll)
            for kind in kinds:
                await self._device_event(str(kind))

    async def _device_event(self, kind: str) -> None:
        logger.info("device event: %s", kind)
        self._probed_at = None  # reachability is to be probed again
        probe = getattr(self._device, "probe_network", None)
        if callable(probe):
            with contextlib.suppress(Exception):
                await probe()
        self._stream_news()
        self._fresh_look()
        if not self._sync_enabled or not self._config.enabled or self._backend is None:
            return
        now = self._clock.now()

        def anything_pending() -> bool:
            # Ops backing off from failures the old network caused may go now.
            for target in self._targets:
                target.queue.end_backoff(now)
            return any(t.queue.next_eligible_at() is not None for t in self._targets)

        if await anyio.to_thread.run_sync(anything_pending):
            await self._ask_for_pull()
