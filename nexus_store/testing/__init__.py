"""The public test kit: fakes that are real implementations, and contract suites.

- :class:`~nexus_store.testing.FakeClock`: time that moves only when told to.
- :class:`SkewedClock`: a device's wall clock off by a fixed amount from a base clock.
- :class:`~nexus_store.sync.device.SimulatedDevice`: a settable device state.
- :class:`FaultProxy`: an HTTP fault proxy on 127.0.0.1 (drops, resets, stalls, 503/429).
- :class:`ScriptedServer`: an HTTP server on 127.0.0.1 whose answers are bytes a test
  chooses (:class:`RawAnswer`, :func:`http_answer`): garbage, truncation, trickles, hangs.
- :class:`ServerProcess`: a real ``nexus-store serve`` subprocess on 127.0.0.1.
- :class:`FaultyBackend`: wraps any backend; drops answers after applying, raises
  retryable/permanent errors, adds delay (scripted per call or seeded-random).
- :class:`BackendContract`, :class:`MultiTenantBackendContract`: the backend contract
  suite; :class:`BlobStorageContract`: the server blob storage contract suite (loaded on
  first use: they need pytest).
- :class:`TemporaryPostgres`, :func:`shared_postgres`: a PostgreSQL from ``pgserver``.
- :class:`WorkDriver`: releases WorkManager work on demand (WM-23).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._clock import FakeClock
from ..sync.device._device import SimulatedDevice
from ._clocks import SkewedClock
from ._faults import Fault, FaultKind, FaultyBackend, InjectedFault
from ._postgres import TemporaryPostgres, shared_postgres
from ._proxy import FaultMode, FaultProxy, ProxyRecord, ProxyStats
from ._scripted import RawAnswer, ScriptedRequest, ScriptedServer, http_answer
from ._server import ServerProcess, ServerStartError
from ._workdriver import WorkDriver

if TYPE_CHECKING:  # pragma: no cover
    from ._blob_contract import BlobStorageContract
    from ._contract import (
        BackendContract,
        BackendFactory,
        MultiTenantBackendContract,
        OpWriter,
        pull_all,
    )

__all__ = [
    "BackendContract",
    "BackendFactory",
    "BlobStorageContract",
    "FakeClock",
    "Fault",
    "FaultKind",
    "FaultMode",
    "FaultProxy",
    "FaultyBackend",
    "InjectedFault",
    "MultiTenantBackendContract",
    "OpWriter",
    "ProxyRecord",
    "ProxyStats",
    "RawAnswer",
    "ScriptedRequest",
    "ScriptedServer",
    "ServerProcess",
    "ServerStartError",
    "SimulatedDevice",
    "SkewedClock",
    "TemporaryPostgres",
    "WorkDriver",
    "http_answer",
    "pull_all",
    "shared_postgres",
]

# The contract suite imports pytest, so it loads only when asked for.
_CONTRACT = frozenset({"BackendContract", "BackendFactory", "MultiTenantBackendContract"})
_CONTRACT |= {"OpWriter", "pull_all"}


def __getattr__(name: str) -> object:
    if name == "BlobStorageContract":
        from . import _blob_contract  # noqa: PLC0415

        return _blob_contract.BlobStorageContract
    if name in _CONTRACT:
        from . import _contract  # noqa: PLC0415

        return getattr(_contract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
