"""The sync engine, moving data: one sync run (lease, push, settle, pull) and its reports.

- :class:`SyncRunner`: one run over one or more :class:`SyncTarget` (a store, or a
  :class:`RawCollection` of a file opened without its model), configured by
  :class:`EngineConfig`; the decisions it executes are pure functions (``_engine``).
- :class:`SyncProgress`, :class:`SyncEvent`, :class:`SyncSummary` and their parts: what a
  run reports while it runs and when it ends (:class:`SyncStreams`).
- Remote pauses (``_pause``): a remote that refused credentials, asked to wait or was
  unreachable is left alone until its pause ends, across runs and processes.

Imports run downward only: the engine uses the queue, the local tables, the remote seam,
the device room and the foundations; nothing in it imports the background service.
"""

from ._engine import EngineConfig
from ._progress import (
    PriorityProgress,
    PrioritySummary,
    SyncEvent,
    SyncPhase,
    SyncProgress,
    SyncStopReason,
    SyncStreams,
    SyncSummary,
)
from ._rawtable import RawCollection, discover_collections
from ._runner import SyncRunner
from ._target import SyncTarget
from ._transfer_progress import TransferKind, TransferProgress, TransferState

__all__ = [
    "EngineConfig",
    "PriorityProgress",
    "PrioritySummary",
    "RawCollection",
    "SyncEvent",
    "SyncPhase",
    "SyncProgress",
    "SyncRunner",
    "SyncStopReason",
    "SyncStreams",
    "SyncSummary",
    "SyncTarget",
    "TransferKind",
    "TransferProgress",
    "TransferState",
    "discover_collections",
]
