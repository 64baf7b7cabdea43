"""The public test kit: fakes that are real implementations, and contract suites.

- :class:`~nexus_store.FakeClock`: time that moves only when told to.
- :class:`~nexus_store.sync.SimulatedDevice`: a settable device state.
"""

from __future__ import annotations

from .._clock import FakeClock
from ..sync._device import SimulatedDevice

__all__ = ["FakeClock", "SimulatedDevice"]
