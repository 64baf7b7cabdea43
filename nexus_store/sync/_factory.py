"""Choosing the background sync adapter for the platform.

The decision is a pure function, :func:`choose_adapter`, of the config's ``enabled`` flag,
an explicit choice (the ``platform`` argument of :meth:`BackgroundSyncServiceFactory.create`)
and the environment variable ``NEXUS_STORE_SYNC_ADAPTER``, and ``sys.platform``:

1. ``enabled=False`` → no-op (the app turned background sync off; nothing overrides that);
2. the argument, if given: an adapter name (``workmanager``, ``bgtask``, ``noop``) or a
   ``sys.platform`` value to decide for;
3. else ``NEXUS_STORE_SYNC_ADAPTER``, if set (an adapter name);
4. else ``sys.platform``: ``android`` → WorkManager-like, ``ios`` → BGTask-like,
   ``emscripten``/``wasi`` → no-op (no background execution), anything else (Linux, macOS,
   Windows...) → WorkManager-like.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from .._clock import Clock
from .._remote import RemoteBackend
from ._config import BackgroundSyncConfig
from ._service import BackgroundSyncService
from .device._device import DeviceStateProvider
from .engine._target import SyncTarget

__all__ = ["ADAPTER_ENV", "AdapterKind", "BackgroundSyncServiceFactory", "choose_adapter"]

ADAPTER_ENV = "NEXUS_STORE_SYNC_ADAPTER"
"""The environment variable naming the adapter to use (``workmanager``, ``bgtask``, ``noop``)."""


class AdapterKind(StrEnum):
    """The background sync adapters."""

    WORKMANAGER = "workmanager"
    BGTASK = "bgtask"
    NOOP = "noop"


_BY_PLATFORM = {
    "android": AdapterKind.WORKMANAGER,
    "ios": AdapterKind.BGTASK,
    "emscripten": AdapterKind.NOOP,
    "wasi": AdapterKind.NOOP,
}


def _parse(value: str, *, source: str, platforms: bool) -> AdapterKind:
    name = value.strip().lower()
    try:
        return AdapterKind(name)
    except ValueError:
        pass
    if platforms and name:
        return _BY_PLATFORM.get(name, AdapterKind.WORKMANAGER)
    choices = ", ".join(kind.value for kind in AdapterKind)
    raise ValueError(f"{source}: unknown background sync adapter {value!r} (choose {choices})")


def choose_adapter(
    *,
    enabled: bool,
    platform: str | None = None,
    environ: Mapping[str, str] | None = None,
    system_platform: str | None = None,
) -> AdapterKind:
    """Decide which adapter to use (see the module docstring for the order).

    Args:
        enabled: the config's ``enabled``.
        platform: the explicit choice: an adapter name or a ``sys.platform`` value.
        environ: the environment (default ``os.environ``).
        system_platform: ``sys.platform`` (default the running one).

    Raises:
        ValueError: the environment variable names no adapter, or ``platform`` is empty.
    """
    if not enabled:
        return AdapterKind.NOOP
    if platform is not None:
        return _parse(platform, source="platform argument", platforms=True)
    env = os.environ if environ is None else environ
    chosen = env.get(ADAPTER_ENV, "").strip()
    if chosen:
        return _parse(chosen, source=ADAPTER_ENV, platforms=False)
    current = sys.platform if system_platform is None else system_platform
    for prefix, kind in _BY_PLATFORM.items():
        if current.startswith(prefix):
            return kind
    return AdapterKind.WORKMANAGER


class BackgroundSyncServiceFactory:
    """Makes the background sync service that fits the platform."""

    @staticmethod
    def create(
        store: SyncTarget | Sequence[SyncTarget],
        config: BackgroundSyncConfig | None = None,
        *,
        backend: RemoteBackend | None = None,
        platform: str | None = None,
        clock: Clock | None = None,
        device: DeviceStateProvider | None = None,
        **options: Any,
    ) -> BackgroundSyncService:
        """A service for ``store`` (not started: use ``async with``).

        Args:
            store: the store (or stores) to sync.
            config: the configuration (default :class:`BackgroundSyncConfig()`).
            backend: where ops go; default the store's ``backend``.
            platform: force an adapter (``workmanager``, ``bgtask``, ``noop``) or decide
                for another ``sys.platform`` value; overrides ``NEXUS_STORE_SYNC_ADAPTER``.
            clock: the time source (``FakeClock`` in tests).
            device: the device state (``SimulatedDevice`` in tests; the machine by default).
            **options: more keyword arguments for the chosen adapter's constructor
                (e.g. ``driver=`` for the WorkManager-like one, ``launch_policy=`` for the
                BGTask-like one).

        Raises:
            ValueError: an unknown adapter name.
            TypeError: an option the chosen adapter does not take.
        """
        config = config or BackgroundSyncConfig()
        kind = choose_adapter(enabled=config.enabled, platform=platform)
        # Imported on demand: an app only loads the adapter it uses.
        if kind is AdapterKind.WORKMANAGER:
            from .workmanager._adapter import WorkManagerSyncService  # noqa: PLC0415

            return WorkManagerSyncService(
                store, backend, config=config, clock=clock, device=device, **options
            )
        if kind is AdapterKind.BGTASK:
            from .bgtask._adapter import BGTaskSyncService  # noqa: PLC0415

            return BGTaskSyncService(
                store, backend, config=config, clock=clock, device=device, **options
            )
        from ._noop import NoopSyncService  # noqa: PLC0415

        return NoopSyncService(store, backend, config=config, clock=clock, device=device, **options)
