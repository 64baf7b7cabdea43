"""The persisted priority sync queue: the public class and the records it hands out.

Every local write lands, in the same transaction, as an op in the table ``nx_queue`` of
the store's own SQLite file; a sync run leases batches in priority order, pushes them and
settles each op (ack, nack, release) under the lease's fencing token.

Imports run downward only: this package uses the foundations (database, codec, clock,
backoff, migrations, quarantine) and nothing above it.
"""

from ._fencing import LeaseBatch, Settled
from ._queue import PrioritySyncQueue
from ._records import OpKind, OpState, QueuedOp, QueueStats

__all__ = [
    "LeaseBatch",
    "OpKind",
    "OpState",
    "PrioritySyncQueue",
    "QueueStats",
    "QueuedOp",
    "Settled",
]
