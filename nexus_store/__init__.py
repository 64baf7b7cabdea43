"""nexus-store: an offline-first data store with a persisted priority sync queue.

Apps write typed records (pydantic models) to a local SQLite file and never wait for the
network; every write lands, in the same transaction, in a priority sync queue that a
background sync service drains to a remote backend.
"""

from typing import TYPE_CHECKING, Any

from ._backoff import RetryBackoff
from ._changelog import ChangeKind, ChangeOrigin, LocalChange
from ._clock import Clock, SystemClock
from ._exceptions import (
    AuthError,
    BlobNotFoundError,
    CodecError,
    CorruptDatabaseError,
    DatabaseError,
    ErrorKind,
    FileTransferError,
    ImmediateRunIneligibleError,
    InvalidWorkRequestError,
    ItemValidationError,
    LifecycleError,
    MigrationError,
    NetworkError,
    NexusStoreError,
    NotPermittedError,
    OpNotFoundError,
    PayloadTooLargeError,
    PermanentError,
    ProtocolError,
    QueueError,
    RateLimitedError,
    RemoteError,
    RetryableError,
    SchedulingError,
    SchemaError,
    ServerUnavailableError,
    SourceChangedError,
    StoreClosedError,
    StoreError,
    SyncCancelledError,
    SyncError,
    TooManyPendingTaskRequestsError,
    UnavailableError,
    UnknownWorkError,
    WorkDataTooLargeError,
)
from ._gc import set_gc_pause
from ._migrations import Migrations
from ._priority import SyncPriority
from ._quarantine import QuarantinedChange
from ._store import NexusStore
from ._version import __version__
from ._watch import ChangeStream
from .queue import LeaseBatch, OpKind, OpState, PrioritySyncQueue, QueuedOp, QueueStats, Settled

if TYPE_CHECKING:  # pragma: no cover
    from .sync._config import BackgroundSyncConfig, BackgroundSyncStatus, ScheduleResult
    from .sync._factory import BackgroundSyncServiceFactory
    from .sync._service import BackgroundSyncService
    from .sync._task import BackgroundSyncTask

# The background sync service loads on first use: `import nexus_store` stays quick.
_LAZY_SYNC = {
    "BackgroundSyncConfig": "._config",
    "BackgroundSyncService": "._service",
    "BackgroundSyncServiceFactory": "._factory",
    "BackgroundSyncStatus": "._config",
    "BackgroundSyncTask": "._task",
    "ScheduleResult": "._config",
}

__all__ = [
    "AuthError",
    "BackgroundSyncConfig",
    "BackgroundSyncService",
    "BackgroundSyncServiceFactory",
    "BackgroundSyncStatus",
    "BackgroundSyncTask",
    "BlobNotFoundError",
    "ChangeKind",
    "ChangeOrigin",
    "ChangeStream",
    "Clock",
    "CodecError",
    "CorruptDatabaseError",
    "DatabaseError",
    "ErrorKind",
    "FileTransferError",
    "ImmediateRunIneligibleError",
    "InvalidWorkRequestError",
    "ItemValidationError",
    "LeaseBatch",
    "LifecycleError",
    "LocalChange",
    "MigrationError",
    "Migrations",
    "NetworkError",
    "NexusStore",
    "NexusStoreError",
    "NotPermittedError",
    "OpKind",
    "OpNotFoundError",
    "OpState",
    "PayloadTooLargeError",
    "PermanentError",
    "PrioritySyncQueue",
    "ProtocolError",
    "QuarantinedChange",
    "QueueError",
    "QueueStats",
    "QueuedOp",
    "RateLimitedError",
    "RemoteError",
    "RetryBackoff",
    "RetryableError",
    "ScheduleResult",
    "SchedulingError",
    "SchemaError",
    "ServerUnavailableError",
    "Settled",
    "SourceChangedError",
    "StoreClosedError",
    "StoreError",
    "SyncCancelledError",
    "SyncError",
    "SyncPriority",
    "SystemClock",
    "TooManyPendingTaskRequestsError",
    "UnavailableError",
    "UnknownWorkError",
    "WorkDataTooLargeError",
    "__version__",
    "set_gc_pause",
]


def __getattr__(name: str) -> Any:
    module = _LAZY_SYNC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(module, "nexus_store.sync"), name)
