"""The transfer step of a sync run: file ops move beside the records, in the same order.

A run starts it next to its push (:func:`start_transfers`) when a database it syncs holds
transfer ops (:class:`~nexus_store.files.FileTransfers`). It leases transfer ops in queue
order (priority, then FIFO; ``LOW`` left out when the run leaves it out), checks each
one's constraints against the device (an op that may not start now goes back untouched
and is reported as waiting), and runs up to ``max_parallel`` at once, so one slow or
stuck file never holds up the others. Running transfers keep their leases (at most
:data:`TRANSFER_LEASE` seconds) renewed; a transfer whose lease passed to another run
(this one was too slow to renew) is stopped.

Each transfer is settled under its lease's token (see
:meth:`~nexus_store.files.FileTransfers.succeed` and ``fail``). Refused credentials and a
remote asking for quiet pause the remote for every run, as for records, and stop the
step; so do three failures in a row (the remote is likely down).

When the run's push and pull are done, :meth:`Transfers.finish` waits for the transfers
still going; if uploads released records that waited for their blobs, the run pushes
once more, and transfer ops that became due meanwhile (downloads queued by the pull) get
a round of their own.

Progress (bytes, total, rate, ETA per transfer; bytes per priority) is published on the
run's progress stream as part of :class:`~nexus_store.sync.engine.SyncProgress`, at most
ten times a second per run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx

from ..._exceptions import AuthError, PermanentError, RateLimitedError, RemoteError
from ...files._ops import TransferSpec
from ...files._policy import FilePolicy
from ...files._remote import BlobRemote, blob_remote_for
from ...files._transfers import FileTransfers
from ...queue import QueuedOp
from ._progress import SyncStopReason
from ._transfer_progress import TransferKind, TransferProgress, TransferState, rate_and_eta

if TYPE_CHECKING:
    from ._run import _Run, _RunnerBase

__all__ = ["TRANSFER_LEASE", "Transfers", "find_sides", "start_transfers"]

logger = logging.getLogger("nexus_store.sync")

_KINDS = {"up": TransferKind.UPLOAD, "post": TransferKind.POST, "get": TransferKind.DOWNLOAD}
TRANSFER_LEASE = 30.0
"""The longest lease of a transfer op: running transfers renew theirs every third of it,
so a transfer of a killed process is taken up by another run this soon (records keep the
run's ``lease_for``)."""
_PUBLISH_EVERY = 0.1
_MAX_FAILURES_IN_ROW = 3
_MAX_ROUNDS = 100_000
_MAX_QUICK = 200
"""The most ops leased at once beyond the free slots (ops whose blobs are on the server)."""
_STOPS = frozenset(
    {
        SyncStopReason.AUTH,
        SyncStopReason.RATE_LIMITED,
        SyncStopReason.PAUSED,
        SyncStopReason.OFFLINE,
        SyncStopReason.BUDGET,
        SyncStopReason.CANCELLED,
        SyncStopReason.ERROR,
    }
)


@dataclass
class _Running:
    op: QueuedOp
    spec: TransferSpec
    token: int
    started: float
    start_bytes: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    first: int | None = None
    """The first progress reported (where this attempt started: bytes already there)."""
    last: int = 0
    ended: bool = False
    """The transfer itself is over (it is being settled, or was: its lease may be gone)."""


def find_sides(targets: list[Any]) -> list[FileTransfers]:
    """The file-transfer sides of the targets' files, one per file (in a worker thread)."""
    sides: dict[int, FileTransfers] = {}
    for target in targets:
        database = target.database
        if id(database) in sides:
            continue
        side = FileTransfers.find(database, target.queue)
        if side is not None:
            sides[id(database)] = side
    return list(sides.values())


def start_transfers(
    runner: _RunnerBase, run: _Run, group: anyio.abc.TaskGroup, sides: list[FileTransfers]
) -> Transfers:
    """Start the run's transfer step over ``sides`` (:func:`find_sides`) in ``group``
    (nothing to do: a step that does nothing)."""
    step = Transfers(runner, run, sides)
    if sides:
        group.start_soon(step._rounds)
    else:
        step._idle.set()
    return step


class Transfers:
    """The transfer step of one run (see the module docstring)."""

    def __init__(self, runner: _RunnerBase, run: _Run, sides: list[FileTransfers]) -> None:
        self.runner = runner
        self.run = run
        self.sides = sides
        self.released_records = 0
        """Uploads done in this run that released records waiting for their blobs."""
        self.lease_for = min(runner.lease_for, TRANSFER_LEASE)
        """Seconds a transfer's lease lasts between renewals (see :data:`TRANSFER_LEASE`)."""
        self._idle = anyio.Event()
        self._client: httpx.AsyncClient | None = None
        self._remote: BlobRemote | None = None
        self._no_remote = ""
        self._failures_in_row = 0
        self._stopped = False
        self._last_publish = 0.0

    # -- the step ----------------------------------------------------------------------------

    async def finish(self) -> None:
        """Wait for the transfers of the run; push again for records they released; run
        one more round for transfer ops that became due (see the module docstring)."""
        if not self.sides:
            return
        await self._idle.wait()
        run = self.run
        if self.released_records and run.stop in (
            None,
            SyncStopReason.DRAINED,
            SyncStopReason.WAITING,
        ):
            self.released_records = 0
            run.stop = None
            await self.runner._push(run)  # type: ignore[attr-defined]
        if run.stop not in _STOPS and not self._stopped:
            self._idle = anyio.Event()
            await self._rounds()
            if self.released_records and run.stop in (
                None,
                SyncStopReason.DRAINED,
                SyncStopReason.WAITING,
            ):
                run.stop = None
                await self.runner._push(run)  # type: ignore[attr-defined]

    async def _rounds(self) -> None:
        try:
            for side in self.sides:
                await self._side(side)
        finally:
            with anyio.CancelScope(shield=True):
                if self._client is not None:
                    await self._client.aclose()
                    self._client = None
            self._idle.set()

    def _stopping(self) -> bool:
        return self._stopped or self.run.stop in _STOPS

    async def _side(self, side: FileTransfers) -> None:
        runner = self.runner
        policy = await runner._local(side.policy)
        # Records freed here may have missed this run's push: finish() pushes again.
        self.released_records += await runner._local(_release_orphans, side)
        device = runner.device.current() if runner.device is not None else None
        try:
            self._remote = blob_remote_for(runner.backend)
        except PermanentError as exc:
            self._remote, self._no_remote = None, str(exc)
        send, receive = anyio.create_memory_object_stream[str](policy.max_parallel * 4 + 16)
        with send, receive:
            await self._drive(side, policy, device, send, receive)

    async def _drive(
        self, side: FileTransfers, policy: FilePolicy, device: Any, send: Any, receive: Any
    ) -> None:
        running: dict[str, _Running] = {}
        skipped: set[str] = set()
        async with anyio.create_task_group() as group:
            group.start_soon(self._renew, side, running)
            try:
                for _ in range(_MAX_ROUNDS):
                    if self._stopping():
                        break
                    free = policy.max_parallel - len(running)
                    if free > 0:
                        await self._start_some(
                            side, policy, device, running, skipped, free, group, send
                        )
                    if not running:
                        break
                    finished = await receive.receive()
                    running.pop(finished, None)
                # Let what runs finish (or be cancelled with the run).
                while running:
                    finished = await receive.receive()
                    running.pop(finished, None)
            finally:
                group.cancel_scope.cancel()

    async def _start_some(  # noqa: PLR0917 - the round's state, passed down
        self,
        side: FileTransfers,
        policy: FilePolicy,
        device: Any,
        running: dict[str, _Running],
        skipped: set[str],
        free: int,
        group: anyio.abc.TaskGroup,
        send: Any,
    ) -> None:
        runner, run = self.runner, self.run
        # Ops whose blobs a batch already took are settled here, many in one transaction:
        # lease as many more as there are such blobs ahead of the run.
        ahead = min(side.small.confirmed_ahead(), _MAX_QUICK)
        batch = await runner._local(
            side.lease, free + len(skipped) + ahead, self.lease_for, sorted(run.allowed)
        )
        back: list[str] = []
        quick: list[tuple[QueuedOp, TransferSpec]] = []
        started = 0
        for op in batch:
            if op.op_id in skipped or op.op_id in running:
                back.append(op.op_id)
                continue
            spec, why = side.decide(op, device, policy)
            if spec is None:
                await runner._local(side.fail, op, batch.token, ValueError(why), policy)
                run.dead[op.priority] += 1
                continue
            if why is None and self._remote is None and spec.kind != "post":
                why = self._no_remote
            if why is None and side.small.confirmed(spec):
                quick.append((op, spec))
                continue
            if started >= free:
                back.append(op.op_id)
                continue
            if why is not None:
                skipped.add(op.op_id)
                back.append(op.op_id)
                self._note(op, spec, TransferState.WAITING, why)
                continue
            await self._start(side, policy, op, spec, batch.token, running, group, send)
            started += 1
        if quick and started < free and side.small.wants_ahead():
            # One of them goes the usual way: its slot sends the next batch meanwhile.
            op, spec = quick.pop()
            await self._start(side, policy, op, spec, batch.token, running, group, send)
        if back:
            await runner._local(side.release, back, batch.token)
        if quick:
            await self._settle_quick(side, quick, batch.token, policy)

    async def _start(  # noqa: PLR0917 - the round's state, passed down
        self,
        side: FileTransfers,
        policy: FilePolicy,
        op: QueuedOp,
        spec: TransferSpec,
        token: int,
        running: dict[str, _Running],
        group: anyio.abc.TaskGroup,
        send: Any,
    ) -> None:
        runner = self.runner
        acked = 0 if spec.kind == "get" else await runner._local(side.acked_bytes, spec.key)
        job = _Running(op, spec, token, runner.clock.monotonic(), acked)
        running[op.op_id] = job
        group.start_soon(self._one, side, job, policy, send)

    async def _settle_quick(
        self,
        side: FileTransfers,
        done: list[tuple[QueuedOp, TransferSpec]],
        token: int,
        policy: FilePolicy,
    ) -> None:
        """Settle uploads whose blobs a batch took, in one transaction (as
        :meth:`_succeeded` does one by one)."""
        runner, run = self.runner, self.run
        _, released = await runner._local(side.succeed_many, done, token)
        self.released_records += released
        self._failures_in_row = 0
        for op, spec in done:
            run.uploaded += 1
            run.transferred_bytes += spec.size
            self._note(op, spec, TransferState.DONE, None, done=spec.size)
        self.runner._publish_progress(run)
        self._last_publish = runner.clock.monotonic()
        await runner._exchanged(run)
        await runner._local(side.maybe_evict, policy)

    async def _renew(self, side: FileTransfers, running: dict[str, _Running]) -> None:
        runner = self.runner
        every = max(0.05, self.lease_for / 3)
        for _ in range(10_000_000):
            await runner.clock.sleep(every)
            by_token: dict[int, list[str]] = {}
            for job in list(running.values()):
                by_token.setdefault(job.token, []).append(job.op.op_id)
            for token, ids in by_token.items():
                settled = await runner._local(side.renew, ids, self.lease_for, token)
                for op_id in settled.stale:
                    lost = running.get(op_id)
                    # An ended transfer's op may be settled already (acked between the
                    # listing and the renewal): nothing was lost.
                    if lost is not None and not lost.ended:
                        logger.warning("transfer %s lost its lease: stopped", op_id)
                        lost.scope.cancel()

    async def _one(self, side: FileTransfers, job: _Running, policy: FilePolicy, send: Any) -> None:
        runner = self.runner
        op, spec = job.op, job.spec
        self._note(op, spec, TransferState.RUNNING, None, done=job.start_bytes, force=True)

        def progress(done: int) -> None:
            if job.first is None:
                job.first = done
            job.last = max(job.last, done)
            elapsed = runner.clock.monotonic() - job.started
            rate, eta = rate_and_eta(done, spec.size, job.start_bytes, elapsed)
            self._note(op, spec, TransferState.RUNNING, None, done=done, rate=rate, eta=eta)

        failure: BaseException | None = None
        try:
            with job.scope:
                await side.perform(
                    op,
                    spec,
                    remote=self._blob_remote,
                    client=self._http_client,
                    policy=policy,
                    progress=progress,
                )
            if job.scope.cancelled_caught:
                return  # the lease passed on: the other holder settles it
        except (RemoteError, OSError, ValueError) as exc:
            failure = exc
        except Exception as exc:  # a transfer must never take the run down
            logger.exception("transfer %s failed unexpectedly", op.op_id)
            failure = exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await runner._local(side.release, [op.op_id], job.token)
            raise
        finally:
            job.ended = True
            send.send_nowait(op.op_id)
        if failure is None:
            await self._succeeded(side, job, policy)
        else:
            await self._failed(side, job, policy, failure)

    async def _succeeded(self, side: FileTransfers, job: _Running, policy: FilePolicy) -> None:
        runner, run = self.runner, self.run
        op, spec = job.op, job.spec
        before = await runner._local(_holds_of, side, spec)
        await runner._local(side.succeed, op, spec, job.token)
        self.released_records += before
        self._failures_in_row = 0
        if spec.kind == "get":
            run.downloaded += 1
        else:
            run.uploaded += 1
        run.transferred_bytes += max(0, job.last - (job.first or 0))
        self._note(op, spec, TransferState.DONE, None, done=spec.size, force=True)
        if spec.kind != "post":
            await runner._exchanged(run)
        await runner._local(side.maybe_evict, policy)

    async def _failed(
        self, side: FileTransfers, job: _Running, policy: FilePolicy, error: BaseException
    ) -> None:
        runner, run = self.runner, self.run
        op, spec = job.op, job.spec
        dead, _ = await runner._local(side.fail, op, job.token, error, policy)
        (run.dead if dead else run.failed)[op.priority] += 1
        run.error = f"{type(error).__name__}: {error}"
        self._note(op, spec, TransferState.FAILED, str(error)[:300], force=True)
        if spec.kind == "post":
            return  # another endpoint's trouble says nothing about our remote
        if isinstance(error, AuthError | RateLimitedError) or (
            isinstance(error, RemoteError) and error.retry_after is not None
        ):
            await runner._pause(run, error)
            run.stop = (
                SyncStopReason.AUTH if isinstance(error, AuthError) else SyncStopReason.RATE_LIMITED
            )
            self._stopped = True
        elif isinstance(error, RemoteError) and error.kind.value == "retryable":
            self._failures_in_row += 1
            if self._failures_in_row >= _MAX_FAILURES_IN_ROW:
                self._stopped = True

    # -- helpers -----------------------------------------------------------------------------

    def _blob_remote(self) -> BlobRemote:
        if self._remote is None:
            raise PermanentError(self._no_remote or "no place for files")
        return self._remote

    def _http_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60.0, follow_redirects=False)
        return self._client

    def _note(
        self,
        op: QueuedOp,
        spec: TransferSpec,
        state: TransferState,
        note: str | None,
        *,
        done: int | None = None,
        rate: float | None = None,
        eta: float | None = None,
        force: bool = False,
    ) -> None:
        run = self.run
        previous = run.transfers.get(op.op_id)
        value = TransferProgress(
            op_id=op.op_id,
            kind=_KINDS[spec.kind],
            sha256=spec.sha256,
            name=spec.name,
            priority=op.priority,
            done=done if done is not None else (previous.done if previous else 0),
            total=spec.size,
            rate=rate,
            eta=eta,
            state=state,
            note=note,
        )
        run.transfers[op.op_id] = value
        now = self.runner.clock.monotonic()
        if force or now - self._last_publish >= _PUBLISH_EVERY:
            self._last_publish = now
            self.runner._publish_progress(run)


def _holds_of(side: FileTransfers, spec: TransferSpec) -> int:
    if spec.kind != "up":
        return 0
    with side.database.reading() as conn:
        row = conn.execute(
            "SELECT count(*) FROM nx_blob_holds WHERE sha256 = ?", (spec.sha256,)
        ).fetchone()
    return int(row[0])


def _release_orphans(side: FileTransfers) -> int:
    from ...files._holds import release_orphan_holds  # noqa: PLC0415

    with side.database.transaction() as conn:
        return release_orphan_holds(conn, side.queue)
