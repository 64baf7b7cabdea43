"""Real constraint probes and the "why is it not running" answer."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from nexus_store.sync import DeviceState, NetworkType
from nexus_store.sync._config import BackgroundSyncConfig, unmet_constraints
from nexus_store.sync.device import SimulatedDevice
from nexus_store.sync.device._constraints import SystemDevice, parse_reachability_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://127.0.0.1:8765/v1", ("127.0.0.1", 8765)),
        ("https://sync.example.com", ("sync.example.com", 443)),
        ("postgresql://u@localhost/db", ("localhost", 5432)),
        ("postgresql://u@/db?host=/tmp", None),
        ("memory://", None),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_reachability_target(target: str, expected: tuple[str, int] | None) -> None:
    """Backend URLs map to the TCP address probed, or to None when no network is involved."""
    assert parse_reachability_target(target) == expected


def test_bad_reachability_target() -> None:
    """A target that is neither a URL nor host:port is refused."""
    with pytest.raises(ValueError, match="host:port"):
        parse_reachability_target("nonsense")


@pytest.mark.anyio
async def test_probe_network_against_real_sockets() -> None:
    """A listening port on 127.0.0.1 is reachable; a closed one is not."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        device = SystemDevice(f"http://127.0.0.1:{port}", cache_for=0)
        with anyio.fail_after(5):
            assert await device.probe_network() is True
        assert device.current().connected is True
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    device = SystemDevice(f"http://127.0.0.1:{port}", cache_for=0)
    with anyio.fail_after(5):
        assert await device.probe_network() is False
    assert device.current().connected is False


def test_system_device_reads_this_machine(tmp_path: Path) -> None:
    """Battery (or its absence) and storage come from this machine: no battery means powered."""
    state = SystemDevice(storage_path=tmp_path / "missing" / "x.db").current()
    if state.battery_percent is None:
        assert state.charging
        assert not state.battery_low
    assert state.storage_low is False
    huge = SystemDevice(storage_path=tmp_path, low_storage_bytes=2**62).current()
    assert huge.storage_low is True


def test_unmet_constraints_name_each_reason() -> None:
    """Each unmet constraint is named; none when all hold."""
    config = BackgroundSyncConfig(
        network_type=NetworkType.UNMETERED,
        requires_charging=True,
        requires_battery_not_low=True,
        requires_storage_not_low=True,
        requires_device_idle=True,
    )
    bad = DeviceState(metered=True, charging=False, battery_low=True, storage_low=True)
    reasons = unmet_constraints(config, bad)
    assert [r.split(":")[0] for r in reasons] == [
        "network",
        "charging",
        "battery",
        "storage",
        "idle",
    ]
    good = DeviceState(idle=True)
    assert unmet_constraints(config, good) == []
    assert (
        unmet_constraints(
            BackgroundSyncConfig(requires_network=False), DeviceState(connected=False)
        )
        == []
    )


def test_config_clamps_interval_and_validates() -> None:
    """min_interval is clamped up to the floor (WM-1), lowered only by an explicit floor."""
    assert BackgroundSyncConfig(min_interval=timedelta(minutes=1)).effective_interval == timedelta(
        minutes=15
    )
    desktop = BackgroundSyncConfig(
        min_interval=timedelta(seconds=30), min_periodic_floor=timedelta(seconds=10)
    )
    assert desktop.effective_interval == timedelta(seconds=30)
    with pytest.raises(ValueError, match="floor"):
        BackgroundSyncConfig(min_periodic_floor=timedelta(0))


def test_simulated_device_notifies_subscribers() -> None:
    """SimulatedDevice.set changes the state and calls subscribers until they unsubscribe."""
    device = SimulatedDevice(connected=False)
    seen: list[bool] = []
    unsubscribe = device.subscribe(lambda s: seen.append(s.connected))
    device.set(connected=True)
    unsubscribe()
    device.set(connected=False)
    assert seen == [True]
    assert device.current().connected is False
