"""The server core's decisions (pure): one op against the stored item, a batch in order.

:func:`decide` answers one prepared op given the item's stored state and the conflict
policy (idempotency by op id, conflicts by ``base_version``, last-writer-wins by hybrid
logical clock, ``server_wins`` or a resolver); :func:`plan_batch` applies a batch in
order, each op seeing the effect of those before it, and says what a storage writes.
Answers are plain dicts (:data:`Answer`); the records of answered op ids carry a
fingerprint of the payload so that a replay is recognised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from .._codec import decode, encode
from .._remote import MAX_REASON, Change, OpStatus, RemoteOp
from ._prepare import PreparedOp, _canonical, item_id_of
from .storage._base import BatchPlan, BatchState, ItemKey, OpRecord, StoredItem

__all__ = [
    "Answer",
    "ConflictPolicy",
    "Outcome",
    "Page",
    "Resolver",
    "answer_of",
    "change_fields",
    "decide",
    "plan_batch",
    "record_of",
    "to_change",
]

Resolver: TypeAlias = Callable[[RemoteOp, Change], Mapping[str, Any] | None]
"""Merges a stale upsert into the server's live copy: returns the data to store, or
``None`` to keep the server's copy."""
ConflictPolicy: TypeAlias = Literal["lww", "server_wins"] | Resolver
"""How a stale write is resolved (see the module docstring)."""
Answer: TypeAlias = dict[str, Any]
"""An :class:`~nexus_store.backends.OpResult` as a plain dict. Plans deal in these and the
core validates a whole batch of them at once, which is several times cheaper than
building the models one by one."""
_REUSED = "op id already used with a different payload"


def change_fields(item: StoredItem) -> dict[str, Any]:
    """The fields of the :class:`~nexus_store.backends.Change` a stored state is sent as.

    ``data`` is left out for a tombstone (``None`` on the wire is its default).
    """
    fields: dict[str, Any] = {
        "collection": item.collection,
        "item_id": item_id_of(item.item_key),
        "version": item.version,
        "deleted": item.deleted,
        "hlc": item.hlc,
    }
    if item.data is not None:
        fields["data"] = decode(item.data)
    return fields


def to_change(item: StoredItem) -> Change:
    """The wire form of a stored item state."""
    return Change.model_validate(change_fields(item))


def record_of(op_id: str, fingerprint: bytes, answer: Answer) -> OpRecord:
    """The record that keeps an answer for replays of its op id."""
    if answer["status"] == "accepted" and "item" not in answer:
        return OpRecord(op_id, fingerprint, answer["version"], None)  # the common case: no blob
    fields = {k: v for k, v in answer.items() if k != "op_id"}
    if isinstance(item := fields.get("item"), Change):
        fields["item"] = item.model_dump(exclude_none=True)
    if isinstance(status := fields["status"], OpStatus):
        fields["status"] = status.value
    return OpRecord(op_id, fingerprint, None, encode(fields))


def answer_of(record: OpRecord) -> Answer:
    """The answer a record keeps (inverse of :func:`record_of`)."""
    if record.result is None:
        return {"op_id": record.op_id, "status": "accepted", "version": record.version}
    return {"op_id": record.op_id, **decode(record.result)}


@dataclass(slots=True)
class Outcome:
    """The decision for one op against the item's current state."""

    status: OpStatus
    write: StoredItem | None = None
    """The item's new state, when the op changes it."""
    version: int | None = None
    item: Change | None = None
    reason: str | None = None

    def result(self, op_id: str) -> Answer:
        """The answer sent back for this op (the fields of an :class:`OpResult`, plain)."""
        answer: Answer = {"op_id": op_id, "status": self.status.value}
        if self.version is not None:
            answer["version"] = self.version
        if self.item is not None:
            answer["item"] = self.item.model_dump(exclude_none=True)
        if self.reason is not None:
            answer["reason"] = self.reason
        return answer


def _written(op: PreparedOp, version: int) -> StoredItem:
    return StoredItem(
        op.key[0],
        op.key[1],
        version,
        op.kind == "delete",
        op.blob,
        op.hlc,
        op.schema_version,
    )


def _accept(write: StoredItem, *, merged: bool = False) -> Outcome:
    return Outcome(
        OpStatus.ACCEPTED,
        write=write,
        version=write.version,
        item=to_change(write) if merged else None,
    )


def decide(
    op: PreparedOp,
    current: StoredItem | None,
    *,
    known_version: int,
    policy: ConflictPolicy,
    next_version: int,
) -> Outcome:
    """Decide what a valid, first-seen op does to its item.

    Args:
        op: the prepared op.
        current: the item's state now (``None``: the tenant never had it).
        known_version: the oldest ``base_version`` that is not stale; the item's current
            version, or, if this batch already changed the item, its version before the batch.
        policy: how a stale write is resolved.
        next_version: the change number an accepted change takes.
    """
    if current is None:
        return _accept(_written(op, next_version))
    if op.kind == "delete" and current.deleted:
        return Outcome(OpStatus.ACCEPTED, version=current.version)
    if op.base_version >= known_version:
        return _accept(_written(op, next_version))
    conflict = Outcome(OpStatus.CONFLICT, item=to_change(current))
    if policy == "server_wins":
        return conflict
    if callable(policy) and op.kind == "upsert" and not current.deleted:
        return _resolve(op, current, policy, next_version, conflict)
    if op.hlc > current.hlc:
        return _accept(_written(op, next_version))
    return conflict


def _resolve(
    op: PreparedOp, current: StoredItem, resolver: Resolver, next_version: int, conflict: Outcome
) -> Outcome:
    assert conflict.item is not None
    try:
        merged = resolver(op.op, conflict.item)
        if merged is None:
            return conflict
        blob = encode(_canonical(dict(merged), 1))
    except Exception as exc:  # a failing resolver must not fail the whole batch
        reason = f"conflict resolver failed: {exc!r}"[:MAX_REASON]
        return Outcome(OpStatus.RETRY, reason=reason)
    write = StoredItem(
        collection=current.collection,
        item_key=current.item_key,
        version=next_version,
        deleted=False,
        data=blob,
        hlc=max(op.hlc, current.hlc),
        schema_version=op.schema_version,
    )
    return _accept(write, merged=True)


def plan_batch(
    ops: Sequence[PreparedOp], state: BatchState, *, policy: ConflictPolicy
) -> BatchPlan:
    """Decide a whole batch, in order, against what the storage read.

    Returns:
        one result per op (in order), the final state of each changed item, the records of
        newly answered op ids, and the tenant's new head.
    """
    items: dict[ItemKey, StoredItem] = dict(state.items)
    stored_records = state.records
    before_batch: dict[ItemKey, int] = {}
    answered: dict[str, tuple[bytes, Answer]] = {}
    writes: dict[ItemKey, StoredItem] = {}
    records: list[OpRecord] = []
    results: list[Answer] = []
    head = state.head
    for prepared in ops:
        op_id = prepared.op_id
        if prepared.invalid is not None:
            results.append({"op_id": op_id, "status": "rejected", "reason": prepared.invalid})
            continue
        if op_id in answered or op_id in stored_records:
            results.append(_replay(prepared, answered, stored_records))
            continue
        key = prepared.key
        current = items.get(key)
        if current is None:
            # The common case, inline: an item the tenant never had is simply written.
            head += 1
            before_batch[key] = 0
            items[key] = writes[key] = StoredItem(
                key[0],
                key[1],
                head,
                prepared.kind == "delete",
                prepared.blob,
                prepared.hlc,
                prepared.schema_version,
            )
            result: Answer = {"op_id": op_id, "status": "accepted", "version": head}
            results.append(result)
            answered[op_id] = (prepared.fingerprint, result)
            records.append(OpRecord(op_id, prepared.fingerprint, head, None))
            continue
        known = before_batch.get(key, current.version)
        outcome = decide(
            prepared, current, known_version=known, policy=policy, next_version=head + 1
        )
        if outcome.write is not None:
            head = outcome.write.version
            before_batch.setdefault(key, current.version)
            items[key] = writes[key] = outcome.write
        result = outcome.result(op_id)
        results.append(result)
        if outcome.status is not OpStatus.RETRY:
            answered[op_id] = (prepared.fingerprint, result)
            records.append(record_of(op_id, prepared.fingerprint, result))
    return BatchPlan(results=results, writes=list(writes.values()), records=records, head=head)


def _replay(
    op: PreparedOp, answered: Mapping[str, tuple[bytes, Answer]], stored: Mapping[str, OpRecord]
) -> Answer:
    """The answer to an op id answered before (earlier in the batch, or in the records)."""
    prior = answered.get(op.op_id)
    if prior is None:
        record = stored[op.op_id]
        prior = (record.fingerprint, answer_of(record))
    if prior[0] == op.fingerprint:
        return prior[1]
    return {"op_id": op.op_id, "status": "rejected", "reason": _REUSED}


@dataclass(frozen=True, slots=True)
class Page:
    """A page of changes as stored: the items, the next cursor, and whether more follow."""

    items: list[StoredItem]
    cursor: int
    has_more: bool
