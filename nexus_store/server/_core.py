"""The server core: the rules of the sync server, written once for every storage.

The rules are pure functions of plain values (:func:`prepare`, :func:`decide`,
:func:`plan_batch`); a :class:`~nexus_store.server._storage.Storage` runs
:func:`plan_batch` inside its transaction and :class:`ServerCore` ties the two together.

What the rules promise:

- **Idempotent by op id.** The first answer for an ``(tenant, op_id)`` (accepted,
  rejected or conflict) is recorded with a fingerprint of the op's payload. A replay
  returns that answer and changes nothing; the same op id with another payload is
  ``REJECTED``. ``RETRY`` answers are not recorded (the op has had no effect yet).
  Ops refused by validation (e.g. an upsert without data) are not recorded either: the
  answer depends on the payload alone, so a replay gets it again.
- **In order.** The ops of a batch apply in the order sent, each seeing the effect of
  the ones before it.
- **Conflicts** come from ``base_version``: a write is *stale* when it is based on an
  older version than the item's current one. Writes of one batch form a chain: an op
  based on the version an item had before the batch is not stale against the versions
  the batch itself produced. A stale write is resolved by the policy:

  - ``"lww"`` (default): last writer wins by hybrid logical clock; a stale write with a
    newer stamp than the stored one (compared as strings, which is causal order for
    :mod:`nexus_store._hlc` stamps) is accepted, otherwise it is a ``CONFLICT`` carrying
    the server's copy. A tie keeps the server's copy.
  - ``"server_wins"``: every stale write is a ``CONFLICT`` carrying the server's copy.
  - a resolver ``(op, server_copy) -> data | None``: for a stale upsert of a live item,
    the returned data is stored (``ACCEPTED`` with ``item`` = what was stored, stamped
    with the later of the two stamps); ``None`` keeps the server's copy (``CONFLICT``).
    When either side is a deletion there is nothing to merge and last-writer-wins
    decides. A resolver that raises gives ``RETRY`` with the error as reason. With
    SQLite storage the resolver runs in a worker thread.

  Deleting an item that is already deleted is accepted without a new change.
- **Sequence.** Every accepted change takes the tenant's next change number, which is
  also the item's new version: gap-free and increasing per tenant, and, because a
  tenant's batches serialize on its counter, committed in sequence order (a pull never
  skips a change that commits later).
- **Pulls** return each item's latest state (tombstones included) with a version after
  the cursor, ordered by version.
- **Tenants** share nothing: the tenant is part of every key, op ids included.

Item data is stored as msgpack with its map keys sorted, so two payloads that are equal
as values have one fingerprint whatever their key order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias

from .._codec import decode, encode
from .._exceptions import CodecError, LifecycleError, PayloadTooLargeError, PermanentError
from ..backends._base import Change, Changes, ItemId, OpStatus, PushResult, RemoteOp
from ._storage import BatchPlan, BatchState, ItemKey, OpRecord, Storage, StoredItem, open_storage

__all__ = [
    "Answer",
    "ConflictPolicy",
    "Outcome",
    "PreparedOp",
    "Resolver",
    "ServerCore",
    "answer_of",
    "canonical",
    "change_fields",
    "check_tenant",
    "decide",
    "item_id_of",
    "item_key_of",
    "open_core",
    "plan_batch",
    "prepare",
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

_MAX_TENANT = 256
_REUSED = "op id already used with a different payload"


def item_key_of(item_id: ItemId) -> str:
    """The stored key of an item id: canonical JSON, so ``1`` and ``"1"`` stay apart."""
    if type(item_id) is str:
        return encode_basestring(item_id)  # what json.dumps does, without its overhead
    if type(item_id) is int:
        return int.__repr__(item_id)
    return json.dumps(item_id, ensure_ascii=False)


def item_id_of(item_key: str) -> ItemId:
    """The item id a stored key was made from (inverse of :func:`item_key_of`)."""
    value = json.loads(item_key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"not an item key: {item_key!r}")
    return value


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def canonical(value: Any) -> Any:
    """``value`` with every map's keys in sorted order (tuples become lists)."""
    # Scalars are tested inline rather than recursed into: this runs for every op.
    if isinstance(value, dict):
        try:
            keys = sorted(value)
        except TypeError:  # mixed key types have no order: keep the one given
            keys = list(value)
        return {k: v if type(v := value[k]) in _SCALARS else canonical(v) for k in keys}
    if isinstance(value, list | tuple):
        return [v if type(v) in _SCALARS else canonical(v) for v in value]
    return value


@dataclass(slots=True)  # not frozen: a frozen dataclass is 4x slower to build, per op
class PreparedOp:
    """An op with what the rules need precomputed, outside any transaction."""

    op: RemoteOp
    key: ItemKey
    blob: bytes | None
    """The data to store, encoded (``None`` for a delete)."""
    fingerprint: bytes
    invalid: str | None = None
    """Why the op is refused whatever the server holds, if it is."""


def prepare(op: RemoteOp) -> PreparedOp:
    """Validate ``op``, encode its data and fingerprint its payload."""
    key = (op.collection, item_key_of(op.item_id))
    invalid: str | None = None
    blob: bytes | None = None
    if "\x00" in op.op_id or "\x00" in op.collection or "\x00" in op.hlc:
        invalid = "op_id, collection and hlc must not contain NUL characters"
    elif op.kind == "upsert" and op.data is None:
        invalid = "an upsert must carry the item's data"
    payload = b""
    if invalid is None and op.data is not None:
        try:
            payload = encode(canonical(op.data))
        except CodecError as exc:
            invalid = f"the item's data cannot be encoded: {exc}"
    if op.kind == "upsert":
        blob = payload
    header = (
        f"{op.collection}\x00{key[1]}\x00{op.kind}\x00{op.base_version}\x00"
        f"{op.hlc}\x00{op.schema_version}\x00"
    )
    digest = hashlib.blake2b(header.encode(), digest_size=16)
    digest.update(payload)
    return PreparedOp(op, key, blob, digest.digest(), invalid)


def change_fields(item: StoredItem) -> dict[str, Any]:
    """The fields of the :class:`~nexus_store.backends.Change` a stored state is sent as."""
    return {
        "collection": item.collection,
        "item_id": item_id_of(item.item_key),
        "version": item.version,
        "deleted": item.deleted,
        "data": None if item.data is None else decode(item.data),
        "hlc": item.hlc,
    }


def to_change(item: StoredItem) -> Change:
    """The wire form of a stored item state."""
    return Change.model_validate(change_fields(item))


def record_of(op_id: str, fingerprint: bytes, answer: Answer) -> OpRecord:
    """The record that keeps an answer for replays of its op id."""
    if answer["status"] == "accepted" and "item" not in answer:
        return OpRecord(op_id, fingerprint, answer["version"], None)  # the common case: no blob
    fields = {k: v for k, v in answer.items() if k != "op_id"}
    if isinstance(item := fields.get("item"), Change):
        fields["item"] = item.model_dump(mode="json")
    return OpRecord(op_id, fingerprint, None, encode(fields))


def answer_of(record: OpRecord) -> Answer:
    """The answer a record keeps (inverse of :func:`record_of`)."""
    if record.result is None:
        return {"op_id": record.op_id, "status": "accepted", "version": record.version}
    return {**decode(record.result), "op_id": record.op_id}


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
        """The answer sent back for this op (the fields of an :class:`OpResult`)."""
        answer: Answer = {"op_id": op_id, "status": self.status}
        if self.version is not None:
            answer["version"] = self.version
        if self.item is not None:
            answer["item"] = self.item
        if self.reason is not None:
            answer["reason"] = self.reason
        return answer


def _written(op: PreparedOp, version: int) -> StoredItem:
    return StoredItem(
        collection=op.key[0],
        item_key=op.key[1],
        version=version,
        deleted=op.op.kind == "delete",
        data=op.blob,
        hlc=op.op.hlc,
        schema_version=op.op.schema_version,
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
    if op.op.kind == "delete" and current.deleted:
        return Outcome(OpStatus.ACCEPTED, version=current.version)
    if op.op.base_version >= known_version:
        return _accept(_written(op, next_version))
    conflict = Outcome(OpStatus.CONFLICT, item=to_change(current))
    if policy == "server_wins":
        return conflict
    if callable(policy) and op.op.kind == "upsert" and not current.deleted:
        return _resolve(op, current, policy, next_version, conflict)
    if op.op.hlc > current.hlc:
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
        blob = encode(canonical(dict(merged)))
    except Exception as exc:  # a failing resolver must not fail the whole batch
        return Outcome(OpStatus.RETRY, reason=f"conflict resolver failed: {exc!r}")
    write = StoredItem(
        collection=current.collection,
        item_key=current.item_key,
        version=next_version,
        deleted=False,
        data=blob,
        hlc=max(op.op.hlc, current.hlc),
        schema_version=op.op.schema_version,
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
    before_batch: dict[ItemKey, int] = {}
    answered: dict[str, tuple[bytes, Answer]] = {}
    writes: dict[ItemKey, StoredItem] = {}
    records: list[OpRecord] = []
    results: list[Answer] = []
    head = state.head
    for prepared in ops:
        op_id = prepared.op.op_id
        if prepared.invalid is not None:
            results.append(Outcome(OpStatus.REJECTED, reason=prepared.invalid).result(op_id))
            continue
        prior = answered.get(op_id)
        if prior is None and (record := state.records.get(op_id)) is not None:
            prior = (record.fingerprint, answer_of(record))
        if prior is not None:
            same = prior[0] == prepared.fingerprint
            results.append(
                prior[1] if same else Outcome(OpStatus.REJECTED, reason=_REUSED).result(op_id)
            )
            continue
        current = items.get(prepared.key)
        known = before_batch.get(prepared.key, current.version if current else 0)
        outcome = decide(
            prepared, current, known_version=known, policy=policy, next_version=head + 1
        )
        if outcome.write is not None:
            head = outcome.write.version
            before_batch.setdefault(prepared.key, current.version if current else 0)
            items[prepared.key] = writes[prepared.key] = outcome.write
        result = outcome.result(op_id)
        results.append(result)
        if outcome.status is not OpStatus.RETRY:
            answered[op_id] = (prepared.fingerprint, result)
            records.append(record_of(op_id, prepared.fingerprint, result))
    return BatchPlan(results=results, writes=list(writes.values()), records=records, head=head)


def check_tenant(tenant: str) -> str:
    """Return ``tenant`` if it is usable as a tenant name.

    Raises:
        ValueError: empty, longer than 256 characters, or holding a NUL character.
    """
    if not isinstance(tenant, str) or not 0 < len(tenant) <= _MAX_TENANT or "\x00" in tenant:
        raise ValueError(f"a tenant is 1 to {_MAX_TENANT} characters without NUL: {tenant!r}")
    return tenant


def _check_policy(policy: ConflictPolicy) -> ConflictPolicy:
    if policy in ("lww", "server_wins") or (callable(policy) and not isinstance(policy, str)):
        return policy
    raise ValueError(f"conflict_policy is 'lww', 'server_wins' or a resolver, not {policy!r}")


class ServerCore:
    """Applies pushes and answers pulls for many tenants over one storage.

    Args:
        storage: where the data lives (see :func:`~nexus_store.server.open_storage`).
        conflict_policy: ``"lww"`` (default), ``"server_wins"`` or a :data:`Resolver`.
        max_batch: the most ops one push may carry.
        max_pull: the most changes one pull returns, whatever ``limit`` asks.

    The core is used from one event loop at a time (the PostgreSQL storage's connections
    belong to the loop that opened them).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        conflict_policy: ConflictPolicy = "lww",
        max_batch: int = 1000,
        max_pull: int = 10_000,
    ) -> None:
        if max_batch < 1 or max_pull < 1:
            raise ValueError("max_batch and max_pull must be at least 1")
        self._storage = storage
        self.conflict_policy = _check_policy(conflict_policy)
        self.max_batch = max_batch
        self.max_pull = max_pull
        self._opened = False
        self._closed = False

    @property
    def storage(self) -> Storage:
        """The storage this core runs on."""
        return self._storage

    async def open(self) -> None:
        """Connect the storage and create its schema if missing. Idempotent.

        Called on first use; call it at start-up to fail early on a bad database.
        """
        self._check_open()
        if not self._opened:
            await self._storage.open()
            self._opened = True

    async def push(self, tenant: str, ops: Sequence[RemoteOp]) -> PushResult:
        """Apply a batch of ops for ``tenant``; one result per op, in order.

        Raises:
            PayloadTooLargeError: more than ``max_batch`` ops.
            RemoteError: the storage failed (nothing of the batch was applied).
            LifecycleError: the core was closed.
        """
        check_tenant(tenant)
        if len(ops) > self.max_batch:
            raise PayloadTooLargeError(
                f"a batch of {len(ops)} ops exceeds the limit of {self.max_batch}"
            )
        await self.open()
        if not ops:
            return PushResult(results=[])
        prepared = [prepare(op) for op in ops]
        keys = list(dict.fromkeys(p.key for p in prepared if p.invalid is None))
        op_ids = list(dict.fromkeys(p.op.op_id for p in prepared if p.invalid is None))
        policy = self.conflict_policy

        def planner(state: BatchState) -> BatchPlan:
            return plan_batch(prepared, state, policy=policy)

        plan = await self._storage.apply(tenant, keys, op_ids, planner)
        return PushResult.model_validate({"results": plan.results})

    async def pull(
        self,
        tenant: str,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
    ) -> Changes:
        """Return ``tenant``'s changes after ``cursor`` (at most ``min(limit, max_pull)``).

        Raises:
            PermanentError: a negative cursor or a limit below 1.
            RemoteError: the storage failed.
            LifecycleError: the core was closed.
        """
        check_tenant(tenant)
        if cursor < 0 or limit < 1:
            raise PermanentError(f"cursor must be >= 0 and limit >= 1 (got {cursor}, {limit})")
        await self.open()
        limit = min(limit, self.max_pull)
        wanted = None if collections is None else list(dict.fromkeys(collections))
        if wanted == []:
            return Changes(changes=[], cursor=cursor, has_more=False)
        rows = await self._storage.changes(tenant, cursor, limit + 1, wanted)
        page = rows[:limit]
        return Changes.model_validate(
            {
                "changes": [change_fields(row) for row in page],
                "cursor": page[-1].version if page else cursor,
                "has_more": len(rows) > limit,
            }
        )

    async def head(self, tenant: str) -> int:
        """The tenant's latest change sequence (0 if none): what an SSE poke announces."""
        check_tenant(tenant)
        await self.open()
        return await self._storage.head(tenant)

    async def aclose(self) -> None:
        """Close the storage. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._storage.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise LifecycleError("the server core is closed")

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def open_core(
    url: str,
    *,
    conflict_policy: ConflictPolicy = "lww",
    max_batch: int = 1000,
    max_pull: int = 10_000,
) -> ServerCore:
    """Open the storage ``url`` names (see :func:`open_storage`) and a core over it.

    Raises:
        ValueError: a URL that names no storage.
        RemoteError: the storage could not be opened.
    """
    core = ServerCore(
        open_storage(url),
        conflict_policy=conflict_policy,
        max_batch=max_batch,
        max_pull=max_pull,
    )
    try:
        await core.open()
    except BaseException:
        await core.aclose()
        raise
    return core
