"""Device state and constraint probes: what the schedulers ask before they run work.

- :class:`DeviceState`, :class:`NetworkType`: a snapshot (network, battery, charging,
  storage) and :class:`DeviceStateProvider`, the seam that reports it.
- :class:`SystemDevice`: the real probes (psutil, reachability of the backend).
- :class:`SimulatedDevice`: a settable device for tests and demos.

Imports run downward only: this room uses the foundations and nothing else of ``sync``.
"""

from ._constraints import SystemDevice
from ._device import DeviceState, DeviceStateProvider, NetworkType, SimulatedDevice

__all__ = ["DeviceState", "DeviceStateProvider", "NetworkType", "SimulatedDevice", "SystemDevice"]
