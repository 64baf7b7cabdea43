"""Real constraint probes: backend reachability, battery and charging, free storage.

:class:`SystemDevice` is the :class:`~nexus_store.sync.DeviceStateProvider` used outside
tests. Battery and storage are read through psutil and ``shutil.disk_usage`` at most
once per ``cache_for`` seconds (cheap, synchronous). Reachability needs I/O, so it is
refreshed by :meth:`SystemDevice.probe_network` (the background service calls it before
deciding to run) and ``current()`` reports the last result.

Choices, documented: a machine without a battery counts as mains powered (charging, never
low); "battery low" means at or under ``low_battery_percent`` while not charging (Android
raises BATTERY_LOW at 15 %); "storage low" means free space under ``low_storage_bytes`` or
under ``low_storage_fraction`` of the disk; desktops report no metered or roaming
network unless told (``metered=True``); "idle" means system CPU use under
``idle_cpu_percent`` since the previous reading.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import psutil

from ..._clock import Clock, SystemClock
from ._device import DeviceState
from ._events import DeviceEventProbe

__all__ = ["SystemDevice", "parse_reachability_target"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432}


def parse_reachability_target(target: str) -> tuple[str, int] | None:
    """Turn a backend URL (or ``host:port``) into the address a TCP probe connects to.

    Returns ``None`` when the URL has no network host (``memory://``, ``sqlite:///...``,
    a PostgreSQL DSN over a Unix socket): such a backend is always reachable.

    Raises:
        ValueError: if the target cannot be parsed.
    """
    if "://" not in target:
        host, _, port_text = target.rpartition(":")
        if not host or not port_text.isdigit():
            raise ValueError(f"not a URL or host:port: {target!r}")
        return host.strip("[]"), int(port_text)
    parts = urlsplit(target)
    if not parts.hostname:
        return None
    known = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    if known is None:
        raise ValueError(f"no port known for {target!r}")
    return parts.hostname, known


class SystemDevice:
    """The device state read from this machine.

    Args:
        reachability: the backend URL (or ``host:port``) whose reachability is "the network".
            ``None``: no probe, the network counts as connected.
        storage_path: a path on the disk whose free space matters (the database's folder).
        metered: report the network as metered (e.g. a tethered laptop).
        low_battery_percent: at or under this, unplugged, the battery is low.
        low_storage_bytes: free space under this is low storage.
        low_storage_fraction: free space under this fraction of the disk is low storage.
        idle_cpu_percent: system CPU use under this counts as idle.
        probe_timeout: seconds a reachability probe may take.
        cache_for: seconds a battery/storage reading is reused.
        clock: the clock that times the cache.
    """

    def __init__(
        self,
        reachability: str | None = None,
        *,
        storage_path: str | Path = ".",
        metered: bool = False,
        low_battery_percent: float = 15.0,
        low_storage_bytes: int = 256 * 1024 * 1024,
        low_storage_fraction: float = 0.02,
        idle_cpu_percent: float = 20.0,
        probe_timeout: float = 3.0,
        cache_for: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self._target = parse_reachability_target(reachability) if reachability else None
        self._storage_path = Path(storage_path)
        self._metered = metered
        self._low_battery = low_battery_percent
        self._low_storage_bytes = low_storage_bytes
        self._low_storage_fraction = low_storage_fraction
        self._idle_cpu = idle_cpu_percent
        self._probe_timeout = probe_timeout
        self._cache_for = cache_for
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._connected = True
        self._cached: DeviceState | None = None
        self._cached_at = 0.0
        psutil.cpu_percent(interval=None)  # prime the CPU counter
        self._events: DeviceEventProbe | None = None

    def poll_events(self) -> list[str]:
        """Network changes and wakes from sleep since the previous call (the first call
        only takes a reading; see :mod:`._events`)."""
        if self._events is None:
            self._events = DeviceEventProbe()
            return []
        return [event.value for event in self._events.poll()]

    @property
    def target(self) -> tuple[str, int] | None:
        """The (host, port) probed for reachability, if any."""
        return self._target

    async def probe_network(self) -> bool:
        """Try a TCP connection to the backend; remember and return whether it worked."""
        if self._target is None:
            connected = True
        else:
            host, port = self._target
            connected = False
            with anyio.move_on_after(self._probe_timeout):
                try:
                    stream = await anyio.connect_tcp(host, port)
                except OSError:
                    connected = False
                else:
                    await stream.aclose()
                    connected = True
        with self._lock:
            if connected != self._connected:
                self._cached = None
            self._connected = connected
        return connected

    def current(self) -> DeviceState:
        """The device state now (battery/storage at most ``cache_for`` seconds old)."""
        now = self._clock.monotonic()
        with self._lock:
            if self._cached is not None and now - self._cached_at < self._cache_for:
                return self._cached
            connected = self._connected
        state = DeviceState(
            connected=connected,
            metered=self._metered,
            **self._power(),
            storage_low=self._storage_low(),
            idle=psutil.cpu_percent(interval=None) < self._idle_cpu,
        )
        with self._lock:
            self._cached, self._cached_at = state, now
        return state

    def _power(self) -> dict[str, object]:
        try:
            battery = psutil.sensors_battery()
        except (AttributeError, NotImplementedError, OSError):  # platforms without sensors
            battery = None
        if battery is None:
            return {"battery_percent": None, "charging": True, "battery_low": False}
        charging = bool(battery.power_plugged)
        percent = float(battery.percent)
        return {
            "battery_percent": max(0.0, min(100.0, percent)),
            "charging": charging,
            "battery_low": not charging and percent <= self._low_battery,
        }

    def _storage_low(self) -> bool:
        path = self._storage_path
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            return False
        return usage.free < self._low_storage_bytes or (
            usage.total > 0 and usage.free / usage.total < self._low_storage_fraction
        )

    def __repr__(self) -> str:
        return f"SystemDevice(target={self._target!r})"
