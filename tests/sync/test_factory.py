"""Choosing the background sync adapter: sys.platform, the argument, the environment."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from nexus_store import NexusStore
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync import (
    AdapterKind,
    BackgroundSyncConfig,
    BackgroundSyncServiceFactory,
    BGTaskSyncService,
    NoopSyncService,
    WorkManagerSyncService,
    choose_adapter,
)
from nexus_store.sync._factory import ADAPTER_ENV
from nexus_store.sync.device import SimulatedDevice


class Note(BaseModel):
    id: str


@pytest.mark.parametrize(
    ("system", "kind"),
    [
        ("android", AdapterKind.WORKMANAGER),
        ("ios", AdapterKind.BGTASK),
        ("emscripten", AdapterKind.NOOP),
        ("wasi", AdapterKind.NOOP),
        ("linux", AdapterKind.WORKMANAGER),
        ("darwin", AdapterKind.WORKMANAGER),
        ("win32", AdapterKind.WORKMANAGER),
        ("freebsd14", AdapterKind.WORKMANAGER),
    ],
)
def test_the_platform_decides_by_default(system: str, kind: AdapterKind) -> None:
    """android → WorkManager-like, ios → BGTask-like, emscripten/wasi → no-op, else WM."""
    assert choose_adapter(enabled=True, environ={}, system_platform=system) is kind


def test_overrides_in_order() -> None:
    """enabled=False wins, then the argument, then NEXUS_STORE_SYNC_ADAPTER, then the platform."""
    env = {ADAPTER_ENV: "bgtask"}
    assert choose_adapter(enabled=False, platform="bgtask", environ=env) is AdapterKind.NOOP
    assert choose_adapter(enabled=True, platform="noop", environ=env) is AdapterKind.NOOP
    assert choose_adapter(enabled=True, platform="ios", environ={}) is AdapterKind.BGTASK
    assert choose_adapter(enabled=True, platform="linux", environ=env) is AdapterKind.WORKMANAGER
    assert choose_adapter(enabled=True, environ=env, system_platform="android") is (
        AdapterKind.BGTASK
    )
    assert choose_adapter(enabled=True, environ={ADAPTER_ENV: " NoOp "}) is AdapterKind.NOOP
    assert choose_adapter(enabled=True, environ={ADAPTER_ENV: ""}, system_platform="ios") is (
        AdapterKind.BGTASK
    )


def test_unknown_adapter_names_are_refused() -> None:
    """A misspelt environment variable or an empty argument is an error, not a silent default."""
    with pytest.raises(ValueError, match="NEXUS_STORE_SYNC_ADAPTER: unknown background sync"):
        choose_adapter(enabled=True, environ={ADAPTER_ENV: "workmanger"})
    with pytest.raises(ValueError, match="platform argument"):
        choose_adapter(enabled=True, platform=" ")


def test_create_builds_the_chosen_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """create() returns the adapter for the choice, with the store's backend by default."""
    backend = MemoryBackend()
    store: NexusStore[Note, str] = NexusStore(":memory:", model=Note, backend=backend)
    device = SimulatedDevice()
    monkeypatch.delenv(ADAPTER_ENV, raising=False)
    wm = BackgroundSyncServiceFactory.create(store, BackgroundSyncConfig(), platform="android")
    assert isinstance(wm, WorkManagerSyncService)
    assert wm.backend is backend
    assert wm.adapter_name == "workmanager"
    bg = BackgroundSyncServiceFactory.create(store, platform="ios", device=device)
    assert isinstance(bg, BGTaskSyncService)
    assert bg.device is device
    monkeypatch.setenv(ADAPTER_ENV, "noop")
    noop = BackgroundSyncServiceFactory.create(store)
    assert isinstance(noop, NoopSyncService)
    assert not noop.is_supported
    disabled = BackgroundSyncServiceFactory.create(
        store, BackgroundSyncConfig(enabled=False), platform="workmanager"
    )
    assert isinstance(disabled, NoopSyncService)
    with pytest.raises(TypeError):
        BackgroundSyncServiceFactory.create(store, platform="ios", driver=object())
