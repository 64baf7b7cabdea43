"""The public test kit: fakes that are real implementations, and contract suites.

- :class:`~nexus_store.FakeClock`: time that moves only when told to.
- :class:`~nexus_store.sync.SimulatedDevice`: a settable device state.
- :class:`FaultProxy`: an HTTP fault proxy on 127.0.0.1 (drops, resets, stalls, 503/429).
- :class:`ServerProcess`: a real ``nexus-store serve`` subprocess on 127.0.0.1.
"""

from __future__ import annotations

from .._clock import FakeClock
from ..sync._device import SimulatedDevice
from ._proxy import FaultMode, FaultProxy, ProxyRecord, ProxyStats
from ._server import ServerProcess, ServerStartError

__all__ = [
    "FakeClock",
    "FaultMode",
    "FaultProxy",
    "ProxyRecord",
    "ProxyStats",
    "ServerProcess",
    "ServerStartError",
    "SimulatedDevice",
]
