"""Moments worth a sync: the network changed, the machine woke from sleep.

:class:`DeviceEventProbe` notices both by comparing cheap readings between two looks: the
set of network interfaces that are up with their addresses (psutil), and how far the
boot-time clock has run ahead of the monotonic clock (it grows only while the machine
sleeps; where there is no boot-time clock, the wall clock's lead stands in, so a step of
the wall clock also counts as a wake: harmless, it asks for at most one run). The
decision is :func:`events_between`, a pure function of two readings.

The background service asks its device provider for these through ``poll_events()`` (a
few milliseconds apart at most every few seconds) and, when work is pending, asks for a
run at once. :class:`~._device.SimulatedDevice` raises them on demand in tests
(``simulate_network_change()``, ``simulate_resume()``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from enum import StrEnum

import psutil

if sys.platform != "win32":
    import fcntl

__all__ = ["DeviceEvent", "DeviceEventProbe", "Reading", "events_between", "take_reading"]

RESUME_GAP = 5.0
"""Seconds the sleeping clock must have gained between two looks to count as a wake."""


class DeviceEvent(StrEnum):
    """Something happened to the device that may let waiting work go now."""

    NETWORK_CHANGED = "network_changed"
    RESUMED = "resumed"


@dataclasses.dataclass(frozen=True)
class Reading:
    """What one look saw."""

    interfaces: frozenset[tuple[str, str]]
    """(interface, address) of every interface that is up."""
    sleep_offset: float
    """Boot-time clock minus monotonic clock (grows only while asleep)."""


def _sleep_offset() -> float:
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime) - time.monotonic()
    return time.time() - time.monotonic()


_SIOCGIFFLAGS = 0x8913
_IFF_RUNNING = 0x40
_IFREQ = struct.Struct("16sh14x")


def _running_linux(names: Iterable[str]) -> set[str] | None:
    """The interfaces among ``names`` whose link is running (psutil's ``isup``), by one
    ``SIOCGIFFLAGS`` ioctl each on one socket: a tenth of ``psutil.net_if_stats()``, which
    also asks each one its speed and duplex. ``None`` where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            running = set()
            for name in names:
                request = _IFREQ.pack(os.fsencode(name)[:15], 0)
                try:
                    answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
                except OSError:
                    continue  # gone since it was listed
                if _IFREQ.unpack(answer)[1] & _IFF_RUNNING:
                    running.add(name)
            return running
    except OSError:
        return None


def _interfaces() -> frozenset[tuple[str, str]]:
    try:
        addresses = psutil.net_if_addrs()
        running = _running_linux(addresses)
        if running is None:
            running = {name for name, stats in psutil.net_if_stats().items() if stats.isup}
    except OSError:
        return frozenset()
    return frozenset(
        (name, address.address)
        for name, entries in addresses.items()
        if name in running
        for address in entries
        if address.address
    )


def take_reading() -> Reading:
    """Look now (about a millisecond)."""
    return Reading(interfaces=_interfaces(), sleep_offset=_sleep_offset())


def events_between(before: Reading, after: Reading) -> list[DeviceEvent]:
    """The events between two readings (pure)."""
    events = []
    if after.interfaces != before.interfaces:
        events.append(DeviceEvent.NETWORK_CHANGED)
    if after.sleep_offset - before.sleep_offset > RESUME_GAP:
        events.append(DeviceEvent.RESUMED)
    return events


class DeviceEventProbe:
    """Reports network changes and wakes since the last look.

    Args:
        read: how to look (default: this machine; tests pass readings of their own).
    """

    def __init__(self, read: Callable[[], Reading] = take_reading) -> None:
        self._read = read
        self._last = read()

    def poll(self) -> list[DeviceEvent]:
        """The events since the previous call."""
        reading = self._read()
        events = events_between(self._last, reading)
        self._last = reading
        return events
