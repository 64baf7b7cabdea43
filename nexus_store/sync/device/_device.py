"""Device state as the schedulers see it, and the seam that reports it.

A :class:`DeviceStateProvider` answers "what is the device like now?" with a
:class:`DeviceState`. :class:`SimulatedDevice` is a settable provider for tests and demos;
real probes (network reachability, psutil battery, free disk) live in
:mod:`nexus_store.sync.device._constraints`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DeviceState",
    "DeviceStateProvider",
    "NetworkType",
    "SimulatedDevice",
]


class NetworkType(StrEnum):
    """The network a device is on, and the network a piece of work requires (WM-13)."""

    NOT_REQUIRED = "not_required"
    """As a requirement: none. As a state: no network at all."""
    CONNECTED = "connected"
    UNMETERED = "unmetered"
    NOT_ROAMING = "not_roaming"
    METERED = "metered"
    TEMPORARILY_UNMETERED = "temporarily_unmetered"


class DeviceState(BaseModel):
    """A snapshot of everything a constraint can depend on."""

    model_config = ConfigDict(frozen=True)

    connected: bool = True
    metered: bool = False
    roaming: bool = False
    temporarily_unmetered: bool = False
    battery_percent: float | None = Field(default=None, ge=0, le=100)
    """``None``: no battery (mains powered)."""
    charging: bool = True
    battery_low: bool = False
    storage_low: bool = False
    idle: bool = False
    """The user is not using the device (iOS processing tasks, WorkManager device idle)."""
    low_power_mode: bool = False
    background_refresh_enabled: bool = True
    """False when the user turned background refresh off for the app (BG-10)."""

    def satisfies_network(self, required: NetworkType) -> bool:
        """Whether the current network meets ``required`` (WM-13)."""
        if required is NetworkType.NOT_REQUIRED:
            return True
        if not self.connected:
            return False
        if required is NetworkType.CONNECTED:
            return True
        if required is NetworkType.UNMETERED:
            return not self.metered or self.temporarily_unmetered
        if required is NetworkType.NOT_ROAMING:
            return not self.roaming
        if required is NetworkType.METERED:
            return self.metered
        return self.temporarily_unmetered  # TEMPORARILY_UNMETERED


@runtime_checkable
class DeviceStateProvider(Protocol):
    """Reports the current device state. Must be cheap: schedulers call it often."""

    def current(self) -> DeviceState:
        """The device state now."""
        ...


class SimulatedDevice:
    """A settable device for tests and demos.

    ``device.set(connected=False)`` changes the state; subscribers registered with
    :meth:`subscribe` are called after every change (so a scheduler can stop a running
    worker whose constraint became unmet, WM-11).
    """

    def __init__(self, state: DeviceState | None = None, **fields: Any) -> None:
        base = state or DeviceState()
        self._state = base.model_copy(update=fields) if fields else base
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[DeviceState], None]] = []
        self._event_subscribers: list[Callable[[str], None]] = []

    def current(self) -> DeviceState:
        """The simulated state."""
        with self._lock:
            return self._state

    def set(self, **fields: Any) -> DeviceState:
        """Change some fields of the state and notify subscribers; return the new state."""
        with self._lock:
            self._state = DeviceState.model_validate({**self._state.model_dump(), **fields})
            state = self._state
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(state)
        return state

    def simulate_network_change(self) -> None:
        """Tell event subscribers the network changed (a new Wi-Fi, a cable plugged in)."""
        self._raise_event("network_changed")

    def simulate_resume(self) -> None:
        """Tell event subscribers the device woke from sleep."""
        self._raise_event("resumed")

    def _raise_event(self, kind: str) -> None:
        with self._lock:
            subscribers = list(self._event_subscribers)
        for callback in subscribers:
            callback(kind)

    def subscribe_events(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(kind)`` on each simulated event (``network_changed``,
        ``resumed``); returns a function that unsubscribes."""
        with self._lock:
            self._event_subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._event_subscribers:
                    self._event_subscribers.remove(callback)

        return unsubscribe

    def subscribe(self, callback: Callable[[DeviceState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` after every change; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe
