"""The remote seam: what a sync run sends and receives, and the backend interface.

A backend has two verbs and a lifecycle (``push``, ``pull``, ``aclose``). Everything
crossing the seam is a validated pydantic model, so a backend that receives garbage
from its transport raises :class:`~nexus_store.ProtocolError` instead of acking.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from enum import StrEnum
from types import TracebackType
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from . import _unclosed
from ._hlc import ClockReading
from ._loop import STOP_TIMEOUT, LoopBinding, close_on_bound_loop, current_binding, shared_loop

__all__ = [
    "Change",
    "Changes",
    "OpResult",
    "OpStatus",
    "PushResult",
    "RemoteBackend",
    "RemoteOp",
]

ItemId = str | int
"""The id of an item on the wire: the model's id field value (a string or an integer)."""

MAX_OP_ID = 64
MAX_COLLECTION = 63
MAX_HLC = 64
"""The longest op id, collection name and stamp an op may carry."""
MAX_INT = 2**63 - 1
"""The largest version, cursor or integer item id: SQLite's and PostgreSQL's 64-bit integer."""
MIN_INT = -(2**63)
MAX_REASON = 4096
"""The longest reason a remote may give for an answer."""
MAX_RETRY_AFTER = 86_400.0
"""The longest wait (seconds) a remote may ask for; a ``Retry-After`` header asking for
more is read as this much."""

WireInt = Annotated[int, Field(strict=True, ge=MIN_INT, le=MAX_INT)]
"""An integer (not a bool, float or string) that fits the 64-bit columns it is stored in."""


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class RemoteOp(_Wire):
    """One write sent upstream.

    ``op_id`` is the idempotency key: a retried op carries the same id and the server
    applies it at most once.
    """

    op_id: str = Field(min_length=1, max_length=MAX_OP_ID)
    collection: str = Field(min_length=1, max_length=MAX_COLLECTION)
    item_id: str | WireInt
    kind: Literal["upsert", "delete"]
    data: dict[str, Any] | None = None
    """The item (``model_dump(mode="json")``) for an upsert; ``None`` for a delete."""
    base_version: int = Field(default=0, ge=0, le=MAX_INT)
    """The server version the client based this write on (0: it had never seen the item)."""
    hlc: str = Field(min_length=1, max_length=MAX_HLC)
    """Hybrid logical clock stamp of the write (last-writer-wins order)."""
    schema_version: int = Field(default=1, ge=1)


def is_plain_op(  # noqa: PLR0917 - an op's fields, positional for speed
    op_id: object,
    collection: object,
    item_id: object,
    kind: object,
    data: object,
    base_version: object,
    hlc: object,
    schema_version: object,
) -> bool:
    """Whether these are :class:`RemoteOp` fields exactly of its types and within its
    bounds, so that they need no validation (``False``: validate them, which may convert
    them or say why they are refused).

    Hot paths (a sync run's leased ops, a server's decoded batch) check this per op: it is
    several times cheaper than building the model.
    """
    if (
        type(op_id) is not str
        or not 0 < len(op_id) <= MAX_OP_ID
        or type(collection) is not str
        or not 0 < len(collection) <= MAX_COLLECTION
        or type(hlc) is not str
        or not 0 < len(hlc) <= MAX_HLC
        or (kind != "upsert" and kind != "delete")  # noqa: PLR1714 - any type compares
        or (type(item_id) is not str and type(item_id) is not int)
        or (type(item_id) is int and not MIN_INT <= item_id <= MAX_INT)
        or type(base_version) is not int
        or not 0 <= base_version <= MAX_INT
        or type(schema_version) is not int
        or schema_version < 1
    ):
        return False
    if data is None:
        return True
    if type(data) is not dict:
        return False
    for key in data:  # noqa: SIM110 - a plain loop is twice as fast as all() on a generator
        if type(key) is not str:
            return False
    return True


class OpStatus(StrEnum):
    """What the remote did with one op."""

    ACCEPTED = "accepted"
    """Applied (or applied earlier: a replay of the same op id)."""
    REJECTED = "rejected"
    """Refused for good (``reason``); the client dead-letters the op."""
    CONFLICT = "conflict"
    """Not applied: the server keeps its copy (``item``); the client adopts it."""
    RETRY = "retry"
    """Not applied now; send again later (after ``retry_after`` seconds, if given)."""


class OpResult(_Wire):
    """The remote's answer for one op."""

    op_id: str = Field(min_length=1, max_length=MAX_OP_ID)
    status: OpStatus
    version: int | None = Field(default=None, strict=True, ge=1, le=MAX_INT)
    """For ``ACCEPTED``: the item's server version (its change sequence) after the write."""
    item: Change | None = None
    """For ``CONFLICT``: the server's current copy. For ``ACCEPTED``: set when the server
    stored something other than what was sent (a resolver merged it)."""
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    retry_after: float | None = Field(
        default=None, strict=True, ge=0, le=MAX_RETRY_AFTER, allow_inf_nan=False
    )


class PushResult(_Wire):
    """The answer to a push: one result per op, in the order sent."""

    results: list[OpResult]

    def by_op_id(self) -> dict[str, OpResult]:
        """The results keyed by op id."""
        return {r.op_id: r for r in self.results}


class Change(_Wire):
    """One item's state on the server after a change (a tombstone if ``deleted``)."""

    collection: str = Field(min_length=1, max_length=MAX_COLLECTION)
    item_id: str | WireInt
    version: int = Field(strict=True, ge=1, le=MAX_INT)
    """The change sequence number that produced this state (monotonic per tenant)."""
    deleted: bool = Field(default=False, strict=True)
    data: dict[str, Any] | None = None
    hlc: str = Field(default="", max_length=MAX_HLC)


class Changes(_Wire):
    """A page of changes after a cursor."""

    changes: list[Change]
    cursor: int = Field(strict=True, ge=0, le=MAX_INT)
    """Pass this to the next ``pull`` to continue after the last change returned."""
    has_more: bool = Field(default=False, strict=True)


OpResult.model_rebuild()


class RemoteBackend(abc.ABC):
    """Where a store's queued ops go and its remote changes come from.

    Implementations: :class:`~nexus_store.backends.MemoryBackend`,
    :class:`~nexus_store.backends.HttpBackend`, :class:`~nexus_store.backends.PostgresBackend`.
    Errors are raised as :class:`~nexus_store.RemoteError` subclasses, never as the
    transport's own exceptions.
    """

    writer_aware: bool = False
    """Whether the backend honours ``writer=`` on :meth:`push` and ``skip_writer=`` on
    :meth:`pull` (echo suppression: a sync run's pull then leaves out what that run pushed).
    A sync run passes them only to a backend that says so, so a backend written before them
    keeps working with its old signatures."""

    @abc.abstractmethod
    async def push(self, ops: Sequence[RemoteOp], *, writer: int | None = None) -> PushResult:
        """Send a batch of ops; return one result per op, in order.

        Args:
            ops: the batch.
            writer: who sends it (a sync run's random id), recorded with what it writes.

        Raises:
            RemoteError: the batch as a whole failed (nothing in it may be acked).
        """

    @abc.abstractmethod
    async def pull(
        self,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
        skip_writer: int | None = None,
    ) -> Changes:
        """Return changes with a sequence greater than ``cursor``, at most ``limit``.

        Args:
            cursor: the ``cursor`` of the previous page (0 for the beginning).
            limit: the most changes to return.
            collections: only these collections (all of the tenant's when ``None``).
            skip_writer: leave out items whose latest state this writer pushed (the
                caller has them); the page's cursor may then move past them.
        """

    _binding: LoopBinding | None = None
    """The event loop this backend's connections belong to (set by :meth:`_bind_loop`)."""

    _tracked: _unclosed.Tracked | None = None

    def _bind_loop(self) -> None:
        """Remember the running loop as the one this backend's connections belong to.

        Backends whose connections are tied to an event loop (sockets, database pools)
        call this before opening any, so that :meth:`close` can close them there. On the
        loop synchronous callers share, a backend left open is closed at exit with a
        ``ResourceWarning`` (until then the registry keeps it alive); such a backend's
        :meth:`aclose` calls :meth:`_unbind`.
        """
        if self._binding is not None and self._binding.thread_id == threading.get_ident():
            return
        self._binding = current_binding()
        if self._tracked is None and shared_loop().thread_id == self._binding.thread_id:
            binding = self._binding
            self._tracked = _unclosed.track(
                self,
                lambda: close_on_bound_loop(
                    self.aclose, binding, what=repr(self), timeout=STOP_TIMEOUT
                ),
                repr(self),
            )

    def _unbind(self) -> None:
        """Forget the registration made by :meth:`_bind_loop` (the backend is closing)."""
        if self._tracked is not None:
            self._tracked.untrack()

    @property
    def server_clock(self) -> ClockReading | None:
        """The remote's clock as its last answer stated it.

        ``None`` when the remote does not state it (the default: an in-process backend
        runs on this process's clock). A sync run makes its stores' clocks observe it.
        """
        return None

    async def aclose(self) -> None:  # noqa: B027 - a default no-op is right for in-process backends
        """Release connections. Idempotent."""

    def close(self) -> None:
        """Release connections from synchronous code. Idempotent.

        Runs :meth:`aclose` on the event loop the connections belong to (the one
        ``store.sync()`` uses, or the app's own loop running in another thread).

        Raises:
            LifecycleError: called inside the loop the connections belong to (``await
                aclose()`` there), or after that loop ended without closing them.
        """
        close_on_bound_loop(self.aclose, self._binding, what=type(self).__name__)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
