"""The exception tree. Every error the package raises derives from :class:`NexusStoreError`.

Foreign exceptions (sqlite3, httpx, psycopg, msgpack) are translated into these at the
edge that meets them; nothing above the edge catches a foreign exception.

::

    NexusStoreError
    ├── StoreError                    local store misuse or trouble
    │   ├── StoreClosedError          the store (or queue) was closed
    │   ├── ItemValidationError       an item (or id) does not fit the model; nothing was written
    │   ├── SchemaError               a model or name that cannot be stored safely
    │   └── DatabaseError             SQLite failed
    │       └── CorruptDatabaseError  the file is not SQLite, or is damaged
    ├── CodecError                    bytes that are not a valid encoded value
    ├── QueueError                    sync queue misuse
    │   ├── OpNotFoundError           no op with that id
    │   └── MigrationError            a queued payload or a stored row could not be upgraded
    ├── RemoteError                   a backend could not do what was asked
    │   ├── RetryableError            try again later (``retry_after`` seconds, if known)
    │   │   ├── NetworkError          could not reach the remote, or the connection broke
    │   │   ├── RateLimitedError      the remote asked to slow down (HTTP 429)
    │   │   ├── ServerUnavailableError  the remote is failing (HTTP 5xx)
    │   │   └── ProtocolError         a malformed, truncated or wrongly typed response
    │   ├── PermanentError            the request can never succeed as it is
    │   │   └── PayloadTooLargeError  the request is bigger than the remote accepts
    │   └── AuthError                 credentials missing, refused or expired
    ├── FileTransferError             a file (blob) could not be stored, sent or fetched
    │   ├── BlobNotFoundError         no local copy of a blob, and the remote has none either
    │   └── SourceChangedError        a queued file changed or vanished before it was sent
    ├── SyncError                     a sync run could not proceed
    │   └── SyncCancelledError        a run was cancelled (its leased ops went back)
    ├── LifecycleError                a service used in the wrong state
    ├── BenchInputError               (nexus_store.bench) an option or remote it cannot use
    ├── BenchRunError                 (nexus_store.bench) a benchmark's client process failed
    └── SchedulingError               background scheduling refused a request
        ├── InvalidWorkRequestError   a work request that cannot be built (WM-14, WM-15)
        ├── WorkDataTooLargeError     input/output/progress data over 10 KB (WM-20)
        ├── UnknownWorkError          no work with that id (test driver, WM-23)
        ├── NotPermittedError         an undeclared BGTask identifier (BG-1)
        ├── TooManyPendingTaskRequestsError  pending-request limits (BG-3)
        ├── UnavailableError          background execution disabled (BG-10)
        └── ImmediateRunIneligibleError  continued processing that cannot start now (BG-10)
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """How a failed op should be treated by the queue."""

    RETRYABLE = "retryable"
    """Send again later with backoff."""
    PERMANENT = "permanent"
    """Never succeeds as it is: dead-letter it with its reason."""
    CONFLICT = "conflict"
    """The remote holds a different version; the conflict policy decides."""
    AUTH = "auth"
    """Credentials were refused: not the op's failure (no attempt counted, never
    dead-lettered); sent again once a usable token arrives."""


class NexusStoreError(Exception):
    """Root of every error raised by nexus-store."""


# -- local store -------------------------------------------------------------------------


class StoreError(NexusStoreError):
    """The local store could not do what was asked."""


class StoreClosedError(StoreError):
    """The store or queue was used after ``close()``."""


class ItemValidationError(StoreError, ValueError):
    """An item or id does not fit the store's model; nothing was written."""


class SchemaError(StoreError):
    """A model, table or field name that cannot be stored safely."""


class DatabaseError(StoreError):
    """SQLite reported an error."""


class CorruptDatabaseError(DatabaseError):
    """The database file is not an SQLite database or is damaged."""


class CodecError(NexusStoreError, ValueError):
    """Bytes that are not a valid encoded value, or a value that cannot be encoded."""


# -- queue ---------------------------------------------------------------------------------


class QueueError(NexusStoreError):
    """The sync queue was misused."""


class OpNotFoundError(QueueError, KeyError):
    """No op with the given id exists."""


class MigrationError(QueueError):
    """A queued payload or a stored row of an older schema version could not be upgraded
    (a step is missing or failed), or migrations could not be imported."""


# -- remote --------------------------------------------------------------------------------


class RemoteError(NexusStoreError):
    """A remote backend failed. ``kind`` tells the queue how to treat the ops involved."""

    kind: ErrorKind = ErrorKind.RETRYABLE

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds the remote asked us to wait before trying again, if it said."""


class RetryableError(RemoteError):
    """A transient failure: try again later."""

    kind = ErrorKind.RETRYABLE


class NetworkError(RetryableError):
    """The remote could not be reached, or the connection broke mid-request."""


class RateLimitedError(RetryableError):
    """The remote asked us to slow down (HTTP 429)."""


class ServerUnavailableError(RetryableError):
    """The remote is failing or overloaded (HTTP 5xx).

    ``status`` is the HTTP status when there was one: 502, 503 and 504 say the remote (or
    a gateway before it) is down or overloaded, whatever was sent; 500 and the others say
    the server failed while handling this request, which may be the request's doing.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        """The HTTP status of the answer, if the failure came as one."""


class ProtocolError(RetryableError):
    """The response was malformed, truncated, oversized or wrongly typed; nothing was acked."""


class PermanentError(RemoteError):
    """The request can never succeed as it is."""

    kind = ErrorKind.PERMANENT


class PayloadTooLargeError(PermanentError):
    """The request body exceeds the remote's limit (HTTP 413)."""


class AuthError(RemoteError):
    """Credentials were missing, refused or expired."""

    kind = ErrorKind.AUTH


# -- files ---------------------------------------------------------------------------------


class FileTransferError(NexusStoreError):
    """A file (blob) could not be stored locally, sent or fetched."""


class BlobNotFoundError(FileTransferError, KeyError):
    """No local copy of the blob, and the remote does not have it (or there is no remote)."""


class SourceChangedError(FileTransferError):
    """A file queued for upload changed or vanished before it was sent (its hash or size
    no longer matches what was queued)."""


# -- sync and scheduling -------------------------------------------------------------------


class SyncError(NexusStoreError):
    """A sync run could not proceed."""


class SyncCancelledError(SyncError):
    """A sync run was cancelled; its leased ops were returned to the queue untouched."""


class LifecycleError(NexusStoreError, RuntimeError):
    """A service was used in a state that does not allow it (not started, already closed...)."""


class SchedulingError(NexusStoreError):
    """Background scheduling refused a request."""


class InvalidWorkRequestError(SchedulingError, ValueError):
    """A work request that cannot be built (e.g. expedited periodic work)."""


class WorkDataTooLargeError(SchedulingError, ValueError):
    """Work input, output or progress data larger than the 10 KB limit."""


class UnknownWorkError(SchedulingError, KeyError):
    """No work with the given id exists."""


class NotPermittedError(SchedulingError):
    """A BGTask identifier that was not declared up front."""


class TooManyPendingTaskRequestsError(SchedulingError):
    """More pending BGTask requests than allowed (1 refresh, 10 processing)."""


class UnavailableError(SchedulingError):
    """Background execution is disabled for the app."""


class ImmediateRunIneligibleError(SchedulingError):
    """A continued-processing request with strategy FAIL that cannot start now."""
