"""The decisions of a sync run, free of I/O: pure functions of plain inputs.

The runner (:mod:`._runner`) leases, pushes and acks; everything it decides on the way
comes from here:

- which priorities a run may send given the device (:func:`allowed_priorities`: ``LOW``
  waits while the network is metered or the battery is low);
- how many leased ops fit one request (:func:`fit_batch`);
- what each per-op answer means for the queue (:func:`plan_results`): accepted → ack
  with the server version; conflict → adopt the server's copy, then ack; rejected →
  dead-letter with the reason; retry → nack with the server's ``retry_after``;
- what a failure of a whole batch means (:func:`plan_batch_error`). An attempt is counted
  only where the failure can be the op's: a remote that is down is not the ops' fault.
  Refused credentials, a remote asking for quiet (429, or 503 with ``Retry-After``), and a
  remote that cannot be reached or says it is down (a connection failure, 502/503/504,
  :func:`failure_scope`) → give the ops back untouched, pause the remote and stop. A
  failure that may come from what was sent (500, a malformed answer) is first checked
  against the remote: if nothing in this run got an answer yet, the remote is probed with
  a cheap request; when the remote answers others, the batch is split in halves down to
  the op that fails alone, which is nacked (an attempt counted; at ``max_attempts`` it is
  dead-lettered); if even the probe gets no answer, the remote is down (release and
  pause). Permanent (e.g. 413) → split the batch in halves, or dead-letter a single op;
- which ops must wait because an earlier op of the same item did not go through
  (:func:`hold_back`), and when a run stops (:func:`budget_left`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from ..._exceptions import (
    AuthError,
    ErrorKind,
    NetworkError,
    PermanentError,
    RateLimitedError,
    RemoteError,
    ServerUnavailableError,
)
from ..._priority import SyncPriority
from ..._remote import Change, OpResult, OpStatus, PushResult
from ..device._device import DeviceState
from ._progress import SyncStopReason

__all__ = [
    "Ack",
    "BatchErrorAction",
    "BatchErrorPlan",
    "EngineConfig",
    "Failure",
    "FailureScope",
    "ResultPlan",
    "allowed_priorities",
    "budget_left",
    "failure_scope",
    "fit_batch",
    "hold_back",
    "is_offline",
    "item_key",
    "plan_batch_error",
    "plan_results",
    "split_batch",
    "split_depth",
]

T = TypeVar("T")

ALL_PRIORITIES: frozenset[SyncPriority] = frozenset(SyncPriority)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Tuning of a sync run.

    Args:
        batch_size: most ops in one push request.
        max_batch_bytes: most payload bytes in one push request (at least one op is
            always sent; an op too big for the remote comes back as a permanent error).
        max_consecutive_failures: batches in a row that may fail as a whole (network,
            5xx, malformed responses) before the run gives up until next time.
        pull_page: most changes asked for per pull request.
    """

    batch_size: int = 500
    max_batch_bytes: int | None = 4 * 1024 * 1024
    max_consecutive_failures: int = 3
    pull_page: int = 1000

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.max_batch_bytes is not None and self.max_batch_bytes < 1:
            raise ValueError("max_batch_bytes must be positive")
        if self.max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be at least 1")
        if self.pull_page < 1:
            raise ValueError("pull_page must be at least 1")


# -- what to send --------------------------------------------------------------------------


def allowed_priorities(device: DeviceState | None) -> frozenset[SyncPriority]:
    """The priorities a run may send now.

    ``LOW`` ops are deferred on a metered network (unless temporarily unmetered), on low
    battery and in low-power mode; everything else is always allowed (whether the
    device is online at all is the caller's check, :func:`is_offline`).
    """
    if device is None:
        return ALL_PRIORITIES
    metered = device.metered and not device.temporarily_unmetered
    if metered or device.battery_low or device.low_power_mode:
        return ALL_PRIORITIES - {SyncPriority.LOW}
    return ALL_PRIORITIES


def is_offline(device: DeviceState | None) -> bool:
    """Whether the device says there is no network (a run then sends nothing)."""
    return device is not None and not device.connected


def fit_batch(sizes: Sequence[int], max_bytes: int | None) -> int:
    """How many leading ops (of payload ``sizes``) fit one request of ``max_bytes``.

    Always at least one when ``sizes`` is not empty, so an oversized op still gets its
    answer (a permanent error) instead of blocking the queue.
    """
    if max_bytes is None:
        return len(sizes)
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > max_bytes and count > 0:
            return count
    return len(sizes)


def split_batch(ops: Sequence[T]) -> tuple[list[T], list[T]]:
    """Halves of a batch (the first half keeps the earlier ops), for a 413-style refusal."""
    middle = max(1, len(ops) // 2)
    return list(ops[:middle]), list(ops[middle:])


class ItemOp(Protocol):
    """What :func:`hold_back` needs of an op: the item it writes."""

    @property
    def collection(self) -> str: ...

    @property
    def item_id(self) -> object: ...


OpT = TypeVar("OpT", bound=ItemOp)


def item_key(op: ItemOp) -> tuple[str, str]:
    """The ``(collection, item id)`` key of the item an op writes."""
    return (op.collection, str(op.item_id))


def hold_back(
    ops: Sequence[OpT], blocked: Iterable[tuple[str, str]]
) -> tuple[list[OpT], list[OpT]]:
    """Split ``ops`` into those that may go now and those that wait behind a failed op.

    Per-item order: when an op of an item did not go through, later ops of that item in
    the same run must not overtake it.

    Args:
        ops: the ops still to send, in queue order.
        blocked: :func:`item_key` of every item with an op that did not go through.

    Returns:
        ``(send, release)``: ops to send now, and ops to give back to the queue untouched.
    """
    blocked_keys = set(blocked)
    if not blocked_keys:
        return list(ops), []
    send: list[OpT] = []
    release: list[OpT] = []
    for op in ops:
        (release if item_key(op) in blocked_keys else send).append(op)
    return send, release


# -- what the answers mean -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledge one op.

    Attributes:
        op_id: the op.
        version: the item's server version after the op (``None`` if the remote did not say).
        adopt: the server's copy to store locally (a conflict the server won, or a merge).
        conflict: whether the remote kept its own copy instead of this write.
    """

    op_id: str
    version: int | None
    adopt: Change | None = None
    conflict: bool = False


@dataclass(frozen=True, slots=True)
class Failure:
    """An op that did not go through: nack it (``RETRYABLE``/``AUTH``) or dead-letter it
    (``PERMANENT``)."""

    op_id: str
    reason: str
    kind: ErrorKind
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class ResultPlan:
    """What to do with each op of a pushed batch."""

    acks: tuple[Ack, ...]
    failures: tuple[Failure, ...]

    @property
    def conflicts(self) -> int:
        """Acks whose write lost to the server's copy."""
        return sum(1 for a in self.acks if a.conflict)


def plan_results(sent: Sequence[str], result: PushResult) -> ResultPlan:
    """Map the remote's per-op answers for the ops ``sent`` (their ids) to queue actions.

    Answers for op ids that were not sent are ignored; an op without an answer is treated
    as a retryable failure (it is never acked on a guess). Of duplicate answers for one op,
    the first counts.
    """
    answers: dict[str, OpResult] = {}
    for result_ in result.results:
        answers.setdefault(result_.op_id, result_)
    acks: list[Ack] = []
    failures: list[Failure] = []
    for op_id in sent:
        answer = answers.get(op_id)
        if answer is None:
            failures.append(
                Failure(op_id, "the remote gave no result for this op", ErrorKind.RETRYABLE)
            )
            continue
        if answer.status is OpStatus.ACCEPTED:
            acks.append(Ack(op_id, answer.version, adopt=answer.item))
        elif answer.status is OpStatus.CONFLICT:
            version = answer.version
            if version is None and answer.item is not None:
                version = answer.item.version
            acks.append(Ack(op_id, version, adopt=answer.item, conflict=True))
        elif answer.status is OpStatus.REJECTED:
            failures.append(
                Failure(op_id, answer.reason or "rejected by the remote", ErrorKind.PERMANENT)
            )
        else:
            failures.append(
                Failure(
                    op_id,
                    answer.reason or "the remote asked to retry later",
                    ErrorKind.RETRYABLE,
                    answer.retry_after,
                )
            )
    return ResultPlan(tuple(acks), tuple(failures))


class BatchErrorAction(StrEnum):
    """What to do with a batch whose request failed as a whole."""

    NACK = "nack"
    """Nack every op (``kind``, ``retry_after``): an attempt is counted, the queue retries
    them later (or dead-letters them at ``max_attempts``)."""
    RELEASE = "release"
    """Give every op back untouched: the failure says nothing about them (refused
    credentials, a remote asking for quiet, a remote that is down), so no attempt is
    counted."""
    SPLIT = "split"
    """Push the two halves separately (the failure may come from one op)."""
    DEAD_LETTER = "dead_letter"
    """The single op can never be sent as it is: dead-letter it with ``reason``."""
    PROBE = "probe"
    """Nothing in this run got an answer yet: ask the remote something cheap, then decide
    again (``answered`` if it answered, ``probed`` if it did not)."""


class FailureScope(StrEnum):
    """Whose failure a whole-batch error can be."""

    REMOTE = "remote"
    """The remote is unreachable or down, whatever was sent: a connection failure, 502,
    503, 504 (also a 429 without ``Retry-After``)."""
    MAYBE_OP = "maybe_op"
    """The server failed while handling this batch (500 and other 5xx, a malformed or
    wrongly typed answer, a storage error): what was sent may be the cause."""


_REMOTE_STATUSES = frozenset({502, 503, 504})


def failure_scope(error: RemoteError) -> FailureScope:
    """Whether a retryable whole-batch error can be the ops' doing (see :class:`FailureScope`)."""
    if isinstance(error, NetworkError | RateLimitedError):
        return FailureScope.REMOTE
    if isinstance(error, ServerUnavailableError) and error.status in _REMOTE_STATUSES:
        return FailureScope.REMOTE
    return FailureScope.MAYBE_OP


def split_depth(batch_size: int) -> int:
    """Halvings (:func:`split_batch`) that take a batch of ``batch_size`` ops down to one."""
    return max(0, batch_size - 1).bit_length()


@dataclass(frozen=True, slots=True)
class BatchErrorPlan:
    """The decision for a failed batch request.

    Attributes:
        action: what to do with the ops.
        kind: the error kind to record on the ops.
        reason: the error text to record (never holds credentials: it comes from our
            own exception messages).
        retry_after: the remote's requested wait, if any.
        counts_as_failure: whether this adds to the run's consecutive-failure count.
        stop: when set, the run stops pushing for this reason.
        pause: whether the remote is paused (see :mod:`._pause`): nothing more is sent to
            it, by any run, until the pause's deadline.
    """

    action: BatchErrorAction
    kind: ErrorKind
    reason: str
    retry_after: float | None = None
    counts_as_failure: bool = True
    stop: SyncStopReason | None = None
    pause: bool = False


def plan_batch_error(
    error: RemoteError,
    *,
    batch_len: int,
    consecutive_failures: int,
    max_consecutive_failures: int,
    answered: bool = False,
    probed: bool = False,
    depth: int = 0,
) -> BatchErrorPlan:
    """Decide what a batch-level remote error means.

    Args:
        error: what the backend raised for the whole request.
        batch_len: ops in the failed request.
        consecutive_failures: whole-batch failures in a row (no answer in between)
            before this one.
        max_consecutive_failures: the run's limit (:class:`EngineConfig`).
        answered: whether the remote answered any request of this run (a push, a pull
            or a probe).
        probed: whether the remote was just probed for this failure and did not answer.
        depth: halvings allowed on top of ``max_consecutive_failures`` to bisect a
            failing batch down to one op (:func:`split_depth` of the run's batch size).
    """
    reason = f"{type(error).__name__}: {error}"
    if isinstance(error, PermanentError) or error.kind is ErrorKind.PERMANENT:
        # One bad op must not take its batch down with it: bisect until it is alone.
        if batch_len > 1:
            return BatchErrorPlan(
                BatchErrorAction.SPLIT, ErrorKind.PERMANENT, reason, counts_as_failure=False
            )
        return BatchErrorPlan(
            BatchErrorAction.DEAD_LETTER, ErrorKind.PERMANENT, reason, counts_as_failure=False
        )
    if isinstance(error, AuthError) or error.kind is ErrorKind.AUTH:
        # Not the ops' failure: they go back as they were, however long the outage lasts.
        return BatchErrorPlan(
            BatchErrorAction.RELEASE,
            ErrorKind.AUTH,
            reason,
            error.retry_after,
            counts_as_failure=False,
            stop=SyncStopReason.AUTH,
            pause=True,
        )
    if error.retry_after is not None:
        # The remote told us to come back later (or to slow down): every request waits,
        # and the ops, which did nothing wrong, go back untouched.
        return BatchErrorPlan(
            BatchErrorAction.RELEASE,
            ErrorKind.RETRYABLE,
            reason,
            error.retry_after,
            counts_as_failure=False,
            stop=SyncStopReason.RATE_LIMITED,
            pause=True,
        )
    remote_down = BatchErrorPlan(
        BatchErrorAction.RELEASE,
        ErrorKind.RETRYABLE,
        reason,
        stop=SyncStopReason.FAILURES,
        pause=True,
    )
    if failure_scope(error) is FailureScope.REMOTE:
        # Down or unreachable: however long it lasts, no op is any closer to the dead
        # letters for it.
        return remote_down
    if not answered:
        # Nobody in this run got an answer: is the remote there at all?
        return (
            remote_down
            if probed
            else BatchErrorPlan(
                BatchErrorAction.PROBE, ErrorKind.RETRYABLE, reason, counts_as_failure=False
            )
        )
    # The remote answers others: the failure may be this batch's. Bisect to the op (each
    # halving counts as a failure, so a remote failing everything stops the run after
    # about log2(batch) requests, not one request per op).
    last = consecutive_failures + 1 >= max_consecutive_failures + depth
    if batch_len > 1:
        if last:
            return remote_down
        return BatchErrorPlan(BatchErrorAction.SPLIT, ErrorKind.RETRYABLE, reason)
    return BatchErrorPlan(
        BatchErrorAction.NACK,
        ErrorKind.RETRYABLE,
        reason,
        stop=SyncStopReason.FAILURES if last else None,
        pause=last,
    )


# -- when to stop ----------------------------------------------------------------------------


def budget_left(started: float, now: float, budget: float | None) -> float | None:
    """Seconds left of a run's time ``budget`` (``None``: unlimited; ``0``: exhausted)."""
    if budget is None:
        return None
    return max(0.0, budget - (now - started))
