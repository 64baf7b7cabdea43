"""Small uploads in batches: one request carries a blob and the small blobs queued after it.

Sending a small file alone costs a round trip and the server's per-request work, more than
its bytes. When the server takes batches (``POST /v1/blobs``), :class:`SmallUploads` sends
the blob of the op being performed together with the blobs of the next upload ops in queue
order (same priority, constraints no stricter than that op's, which the device meets, not
leased by any run, local copy unchanged), up to :data:`BATCH_BLOBS` blobs or the server's
batch size. The server verifies each blob's SHA-256 and stores it whole or not at all,
answering each on its own.

The blobs it confirms are remembered for the rest of the sync run: when the queue hands
their ops out, they are done at once (the run still settles each op, in queue order,
releasing the records that wait for that blob; a record is never released before its blob
is on the server). Ops being performed at once that are in the same batch wait for it.
When few confirmed blobs are left ahead of the run, the op being settled sends the next
batch (its slot waits for it while the run's other slots go on), so sending overlaps the
settling of the blobs already sent.
A blob the batch refused (changed file, quota, size) is not remembered: its op is sent on
its own, where it gets its own error and is dead-lettered alone; the others go on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from .._exceptions import RemoteError, RetryableError, SourceChangedError
from .._priority import SyncPriority
from ..queue import QueuedOp
from ._local import LocalBlobs
from ._ops import TransferSpec, decode_spec
from ._policy import FilePolicy, TransferConstraints, effective_constraints
from ._remote import BlobRemote
from ._tables import FILES_COLLECTION
from ._tus_upload import WITH_CREATION

__all__ = ["BATCH_BLOBS", "BATCH_BLOB_BYTES", "SmallUploads"]

BATCH_BLOB_BYTES = WITH_CREATION
"""Files up to this size go in batches (larger ones go over tus, resumable)."""
BATCH_BLOBS = 200
"""The most blobs in one batch."""
_MANIFEST_ROOM = 120
"""Bytes of manifest per blob, kept free in the batch's size."""

_NEXT = (
    "SELECT q.payload FROM nx_queue q LEFT JOIN nx_leases l ON l.seq = q.seq "
    "WHERE q.chain = 0 AND q.delayed = 0 AND q.priority = ?1 AND q.collection = ?2 "
    "AND q.state = 'pending' AND (l.leased_until IS NULL OR l.leased_until <= ?3) "
    "ORDER BY q.seq LIMIT ?4"
)


@dataclass
class _Flight:
    """One batch on its way."""

    shas: set[str]
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class SmallUploads:
    """The batches of one sync run's small uploads (see the module docstring).

    Args:
        blobs: the local blobs (the bytes sent, and whether a copy changed).
    """

    def __init__(self, blobs: LocalBlobs) -> None:
        self.blobs = blobs
        self._confirmed: set[str] = set()
        self._ready: set[str] = set()
        """Blobs confirmed whose ops this run has not reached yet."""
        self._flying: dict[str, _Flight] = {}
        self._gathering = anyio.Lock()
        self._dry = False
        """The last batch sent ahead found nothing to send (none is tried again until an
        op's own batch goes)."""

    def __repr__(self) -> str:
        return f"SmallUploads(confirmed={len(self._confirmed)}, flying={len(self._flying)})"

    @staticmethod
    def fits(spec: TransferSpec) -> bool:
        """Whether the op's blob is small enough to go in a batch."""
        return spec.kind == "up" and spec.size <= BATCH_BLOB_BYTES

    def confirmed(self, spec: TransferSpec) -> bool:
        """Whether a batch of this run took the op's blob (the op is then done at once;
        the blob no longer counts as ahead of the run)."""
        if not self.fits(spec) or spec.sha256 not in self._confirmed:
            return False
        self._ready.discard(spec.sha256)
        return True

    def confirmed_ahead(self) -> int:
        """How many blobs batches took whose ops the run has not reached yet."""
        return len(self._ready)

    def wants_ahead(self) -> bool:
        """Whether the next op to :meth:`send` would send the next batch ahead."""
        return len(self._ready) < BATCH_BLOBS // 2 and not self._flying and not self._dry

    async def send(
        self,
        remote: BlobRemote,
        op: QueuedOp,
        spec: TransferSpec,
        policy: FilePolicy,
        progress: Callable[[int], None],
    ) -> bool:
        """Get the op's blob to the server in a batch.

        When few confirmed blobs are left ahead and no batch is on its way, the next batch
        goes now (this op's slot waits for it while the run's other slots settle the ops
        already confirmed), so sending and settling overlap.

        Returns:
            ``True``: the server has it; ``False``: send it on its own (the server takes no
            batches, or refused this blob in one).

        Raises:
            SourceChangedError: the op's file changed (or vanished) since it was queued.
            RemoteError: the batch failed as a whole.
        """
        sha = spec.sha256
        limit = await remote.max_batch()
        if limit is None:
            return False
        if sha not in self._confirmed:
            flight = self._flying.get(sha)
            if flight is None:
                flight = _Flight({sha})
                self._flying[sha] = flight
                await self._fly(flight, remote, op.priority, spec, policy, limit)
            else:
                await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if sha not in self._confirmed:
                return False
        self._ready.discard(sha)
        progress(0)
        progress(spec.size)
        if self.wants_ahead():
            # The next batch, ahead of the ops (a failure is theirs to meet on their own).
            with contextlib.suppress(RemoteError, SourceChangedError):
                await self._fly(_Flight(set()), remote, op.priority, spec, policy, limit)
        return True

    async def _fly(  # noqa: PLR0917 - the op and where it goes
        self,
        flight: _Flight,
        remote: BlobRemote,
        priority: SyncPriority,
        spec: TransferSpec,
        policy: FilePolicy,
        limit: int,
    ) -> None:
        """Send a batch: the op's blob if it is in ``flight`` (else only the ones after it)."""
        own = spec.sha256 in flight.shas
        try:
            async with self._gathering:  # two batches never gather the same blobs
                items = await anyio.to_thread.run_sync(
                    self._gather,
                    priority,
                    spec,
                    policy,
                    limit - 1024,
                    own,
                    set(self._flying) | self._confirmed,
                )
                for sha, _ in items:
                    self._flying[sha] = flight
                    flight.shas.add(sha)
            self._dry = not own and not items
            if items:
                outcomes = await remote.put_blobs(items)
                stored = {o.sha256 for o in outcomes if o.error is None}
                self._confirmed |= stored
                self._ready |= stored
        except BaseException as exc:
            flight.error = (
                exc
                if isinstance(exc, RemoteError | SourceChangedError)
                else RetryableError(f"the batch did not finish: {type(exc).__name__}")
            )
            raise
        finally:
            for sha in flight.shas:
                self._flying.pop(sha, None)
            flight.done.set()

    def _gather(  # noqa: PLR0917 - what a batch is made of
        self,
        priority: SyncPriority,
        spec: TransferSpec,
        policy: FilePolicy,
        room: int,
        own: bool,
        taken: set[str],
    ) -> list[tuple[str, bytes]]:
        """The op's blob (with ``own``) and the next ones that may go with it (in a
        worker thread); ``taken``: blobs sent or being sent."""
        with self.blobs.database.reading() as conn:
            rows = conn.execute(
                _NEXT, (int(priority), FILES_COLLECTION, time.time(), BATCH_BLOBS * 3)
            ).fetchall()
            chosen = ([spec] if own else []) + self._more(rows, priority, spec, policy, room, taken)
            states = self.blobs.states(conn, [c.sha256 for c in chosen])
        # The files are read without holding the database.
        items = []
        for n, one in enumerate(chosen):
            data = _read(self.blobs, one, states.get(one.sha256))
            if data is not None:
                items.append((one.sha256, data))
            elif n == 0 and own:
                raise SourceChangedError(
                    f"blob {spec.sha256[:12]}: the file changed since it was queued"
                )
            # Another changed copy is left out: its own attempt says so.
        return items

    def _more(  # noqa: PLR0917 - what may join the op's blob
        self,
        rows: list[tuple[bytes]],
        priority: SyncPriority,
        spec: TransferSpec,
        policy: FilePolicy,
        room: int,
        taken: set[str],
    ) -> list[TransferSpec]:
        """The next queued small uploads that may go with the op's (``rows``: next ops)."""
        room -= spec.size + _MANIFEST_ROOM
        wanted = effective_constraints(spec.constraints, priority, spec.size, policy)
        taken = taken | {spec.sha256}
        more: list[TransferSpec] = []
        for (payload,) in rows:
            if len(more) + 1 >= BATCH_BLOBS or room < _MANIFEST_ROOM:
                break
            try:
                other = decode_spec(payload)
            except ValueError:
                continue
            needs = effective_constraints(other.constraints, priority, other.size, policy)
            if (
                not self.fits(other)
                or other.sha256 in taken
                or other.size + _MANIFEST_ROOM > room
                or not _within(needs, wanted)
            ):
                continue
            taken.add(other.sha256)
            more.append(other)
            room -= other.size + _MANIFEST_ROOM
        return more


def _within(needs: TransferConstraints, met: TransferConstraints) -> bool:
    """Whether ``needs`` asks nothing beyond ``met`` (constraints known to be met)."""
    return (needs | met) == met


def _read(blobs: LocalBlobs, spec: TransferSpec, state: tuple[Any, ...] | None) -> bytes | None:
    """The blob's local copy, or ``None`` if it changed or vanished since it was queued."""
    path = blobs.usable(spec.sha256, state)
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            data = handle.read(spec.size + 1)
    except OSError:
        return None
    return data if len(data) == spec.size else None
