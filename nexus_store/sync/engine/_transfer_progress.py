"""What a sync run reports of its file transfers: bytes, total, rate and ETA per transfer.

:class:`TransferProgress` rides on :class:`~nexus_store.sync.engine.SyncProgress` (its
``transfers``, with bytes per priority in ``bytes_per_priority``), so every subscriber
of a run's or a service's progress stream sees them; :func:`rate_and_eta` is the pure
arithmetic.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from ..._priority import SyncPriority

__all__ = ["TransferKind", "TransferProgress", "TransferState", "rate_and_eta"]


class TransferKind(StrEnum):
    """Which way a transfer goes."""

    UPLOAD = "upload"
    """A blob to the sync server (tus)."""
    POST = "post"
    """A file POSTed to an HTTP endpoint."""
    DOWNLOAD = "download"
    """A blob from the sync server."""


class TransferState(StrEnum):
    """Where a transfer of a run is."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    """Failed for now (it backs off and goes again) or for good (dead-lettered)."""
    WAITING = "waiting"
    """Its constraints are not met on this device now (``note`` says which)."""


class TransferProgress(BaseModel):
    """One transfer's progress."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op_id: str
    kind: TransferKind
    sha256: str
    name: str | None = None
    priority: SyncPriority
    done: int = 0
    """Bytes the other side holds (or, while a chunk is in flight, has been sent)."""
    total: int = 0
    rate: float | None = None
    """Bytes per second since the transfer started in this run (``None``: too early)."""
    eta: float | None = None
    """Seconds left at that rate."""
    state: TransferState = TransferState.RUNNING
    note: str | None = None
    """Why it waits or failed."""


_MIN_ELAPSED = 0.2


def rate_and_eta(
    done: int, total: int, started_at_bytes: int, elapsed: float
) -> tuple[float | None, float | None]:
    """The rate (bytes/s) since a transfer started, and the seconds left at that rate."""
    moved = done - started_at_bytes
    if elapsed < _MIN_ELAPSED or moved <= 0:
        return None, None
    rate = moved / elapsed
    return rate, max(0.0, (total - done) / rate)
