"""The server core: the rules of the sync server, written once for every storage.

The rules are pure functions of plain values (:func:`prepare`, :func:`decide`,
:func:`plan_batch`); a :class:`~nexus_store.server.storage.Storage` runs
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
- **Bounded clocks.** An op stamped more than ``max_clock_offset`` seconds ahead of the
  server's clock is applied re-stamped with the server's time (see
  :mod:`._clock_bound`), so a device whose clock runs fast cannot win every conflict.

Item data is stored as msgpack with its map keys sorted, so two payloads that are equal
as values have one fingerprint whatever their key order. Data nested deeper than 64
levels is refused (``REJECTED``, not recorded) before anything recurses over it.

The hot path deals in plain values: :func:`prepare_wire` takes an op as decoded from a
msgpack body (falling back to full validation only for what is not already of the wire
types), and answers are plain dicts that the HTTP layer encodes once per batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias

from .._clock import Clock, SystemClock
from .._codec import decode, encode
from .._exceptions import CodecError, LifecycleError, PayloadTooLargeError, PermanentError
from .._gc import collector_paused
from .._remote import (
    MAX_REASON,
    Change,
    Changes,
    ItemId,
    OpStatus,
    PushResult,
    RemoteOp,
    is_plain_op,
)
from ._clock_bound import DEFAULT_MAX_CLOCK_OFFSET, bound_stamps, check_max_offset
from .storage._base import (
    BatchPlan,
    BatchState,
    ItemKey,
    OpRecord,
    Storage,
    StoredItem,
)
from .storage._open import open_storage

__all__ = [
    "Answer",
    "ConflictPolicy",
    "Outcome",
    "Page",
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
    "prepare_wire",
    "record_of",
    "refused",
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
    # Keys made by item_key_of: a string without escapes, or a plain integer, is read
    # without the JSON parser (this runs for every change pulled).
    if len(item_key) >= 2 and item_key[0] == '"' == item_key[-1] and "\\" not in item_key:
        return item_key[1:-1]
    if item_key.isascii() and item_key.lstrip("-").isdigit() and item_key[1:2] != "-":
        return int(item_key)
    value = json.loads(item_key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"not an item key: {item_key!r}")
    return value


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_MAX_DEPTH = 64
_TOO_DEEP = f"the item's data nests deeper than {_MAX_DEPTH} levels"
_OP_FIELDS = frozenset(RemoteOp.model_fields)


class _TooDeepError(Exception):
    """Raised by :func:`_canonical` past ``_MAX_DEPTH`` levels."""


def canonical(value: Any) -> Any:
    """``value`` with every map's keys in sorted order (tuples become lists).

    Raises:
        ValueError: maps and lists nest deeper than 64 levels.
    """
    try:
        return _canonical(value, 1)
    except _TooDeepError:
        raise ValueError(_TOO_DEEP) from None


def _canonical(value: Any, depth: int) -> Any:
    # This runs for every op: scalars are tested inline rather than recursed into, and a
    # plain loop builds the map (cheaper than a comprehension). The depth bound keeps a
    # poison op from reaching the recursion limit.
    if isinstance(value, dict):
        if depth > _MAX_DEPTH:
            raise _TooDeepError
        try:
            keys = sorted(value)
        except TypeError:  # mixed key types have no order: keep the one given
            keys = list(value)
        out = {}
        for k in keys:
            v = value[k]
            out[k] = v if type(v) in _SCALARS else _canonical(v, depth + 1)
        return out
    if isinstance(value, list | tuple):
        if depth > _MAX_DEPTH:
            raise _TooDeepError
        return [v if type(v) in _SCALARS else _canonical(v, depth + 1) for v in value]
    return value


@dataclass(slots=True)  # not frozen: a frozen dataclass is 4x slower to build, per op
class PreparedOp:
    """An op with what the rules need precomputed, outside any transaction."""

    op_id: str
    key: ItemKey
    kind: str
    """``"upsert"`` or ``"delete"``."""
    base_version: int
    hlc: str
    schema_version: int
    blob: bytes | None
    """The data to store, encoded (``None`` for a delete)."""
    fingerprint: bytes
    invalid: str | None = None
    """Why the op is refused whatever the server holds, if it is."""
    origin: RemoteOp | dict[str, Any] | None = None
    """The op as received (a model, or its wire fields): what a resolver is shown."""

    @property
    def op(self) -> RemoteOp:
        """The op as a :class:`RemoteOp` (built on demand from wire fields)."""
        origin = self.origin
        if isinstance(origin, RemoteOp):
            return origin
        op = RemoteOp.model_validate(origin)
        self.origin = op
        return op


def prepare(op: RemoteOp) -> PreparedOp:
    """Check ``op`` against the rules, encode its data and fingerprint its payload."""
    return _prepare(
        op.op_id,
        op.collection,
        op.item_id,
        op.kind,
        op.data,
        op.base_version,
        op.hlc,
        op.schema_version,
        op,
    )


def prepare_wire(raw: Any) -> PreparedOp | None:
    """Prepare an op decoded from a msgpack body, if it is exactly of the wire types.

    This is :func:`prepare` without building a :class:`RemoteOp`: the checks are the
    model's for values that need no conversion. ``None`` means "validate it in full"
    (a value of another type, which the model may convert or refuse with its reason).
    Strings decoded from msgpack are valid UTF-8 already; JSON input may hold lone
    surrogates, which the model refuses, so it should take the full path.
    """
    if type(raw) is not dict or not _OP_FIELDS.issuperset(raw):
        return None
    try:
        op_id = raw["op_id"]
        collection = raw["collection"]
        item_id = raw["item_id"]
        kind = raw["kind"]
        hlc = raw["hlc"]
    except KeyError:
        return None
    data = raw.get("data")
    base_version = raw.get("base_version", 0)
    schema_version = raw.get("schema_version", 1)
    if not is_plain_op(op_id, collection, item_id, kind, data, base_version, hlc, schema_version):
        return None
    return _prepare(op_id, collection, item_id, kind, data, base_version, hlc, schema_version, raw)


def refused(op_id: str, reason: str) -> PreparedOp:
    """An op refused before preparing (it failed validation): answered ``REJECTED``."""
    return PreparedOp(op_id, ("", ""), "", 0, "", 1, None, b"", reason)


def _prepare(  # noqa: PLR0917 - the fields of an op, positional for speed
    op_id: str,
    collection: str,
    item_id: ItemId,
    kind: str,
    data: dict[str, Any] | None,
    base_version: int,
    hlc: str,
    schema_version: int,
    origin: RemoteOp | dict[str, Any],
) -> PreparedOp:
    # item_key_of, inline: this runs for every op.
    item_key = encode_basestring(item_id) if type(item_id) is str else item_key_of(item_id)
    invalid: str | None = None
    payload = b""
    if "\x00" in op_id or "\x00" in collection or "\x00" in hlc:
        invalid = "op_id, collection and hlc must not contain NUL characters"
    elif data is not None:
        try:
            payload = encode(_canonical(data, 1))
        except _TooDeepError:
            invalid = _TOO_DEEP
        except CodecError as exc:
            invalid = f"the item's data cannot be encoded: {exc}"
    elif kind == "upsert":
        invalid = "an upsert must carry the item's data"
    if invalid is not None:
        return PreparedOp(
            op_id,
            (collection, item_key),
            kind,
            base_version,
            hlc,
            schema_version,
            None,
            b"",
            invalid,
            origin,
        )
    header = (
        f"{collection}\x00{item_key}\x00{kind}\x00{base_version}\x00{hlc}\x00{schema_version}\x00"
    )
    fingerprint = hashlib.blake2b(header.encode() + payload, digest_size=16).digest()
    return PreparedOp(
        op_id,
        (collection, item_key),
        kind,
        base_version,
        hlc,
        schema_version,
        payload if kind == "upsert" else None,
        fingerprint,
        None,
        origin,
    )


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
        max_clock_offset: seconds an op's stamp may be ahead of ``clock`` before it is
            re-stamped with the server's time.
        clock: the server's clock (the system clock by default).

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
        max_clock_offset: float = DEFAULT_MAX_CLOCK_OFFSET,
        clock: Clock | None = None,
    ) -> None:
        if max_batch < 1 or max_pull < 1:
            raise ValueError("max_batch and max_pull must be at least 1")
        self._storage = storage
        self.conflict_policy = _check_policy(conflict_policy)
        self.max_batch = max_batch
        self.max_pull = max_pull
        self.max_clock_offset = check_max_offset(max_clock_offset)
        self.clock: Clock = clock or SystemClock()
        self.restamped = 0
        """Ops re-stamped because their clock was ahead of the server's beyond the bound."""
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
        self._check_batch(tenant, len(ops))
        answers = await self.apply(tenant, [prepare(op) for op in ops])
        return PushResult.model_validate({"results": answers})

    async def apply(self, tenant: str, ops: Sequence[PreparedOp]) -> list[Answer]:
        """:meth:`push` for prepared ops, answering plain dicts (what the server sends).

        Raises:
            PayloadTooLargeError: more than ``max_batch`` ops.
            RemoteError: the storage failed (nothing of the batch was applied).
            LifecycleError: the core was closed.
        """
        self._check_batch(tenant, len(ops))
        await self.open()
        if not ops:
            return []
        self.restamped += bound_stamps(
            ops, int(self.clock.now() * 1000), int(self.max_clock_offset * 1000)
        )
        keys = list(dict.fromkeys([p.key for p in ops if p.invalid is None]))
        op_ids = list(dict.fromkeys([p.op_id for p in ops if p.invalid is None]))
        policy = self.conflict_policy

        def planner(state: BatchState) -> BatchPlan:
            return plan_batch(ops, state, policy=policy)

        plan = await self._storage.apply(tenant, keys, op_ids, planner)
        return plan.results

    def _check_batch(self, tenant: str, size: int) -> None:
        check_tenant(tenant)
        if size > self.max_batch:
            raise PayloadTooLargeError(
                f"a batch of {size} ops exceeds the limit of {self.max_batch}"
            )

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
        page = await self.page(tenant, cursor, limit, collections=collections)
        with collector_paused():  # a page may hold thousands of changes
            return Changes.model_validate(
                {
                    "changes": [change_fields(item) for item in page.items],
                    "cursor": page.cursor,
                    "has_more": page.has_more,
                }
            )

    async def page(
        self,
        tenant: str,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
    ) -> Page:
        """:meth:`pull` as stored states (data still encoded): what the server sends.

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
            return Page([], cursor, has_more=False)
        rows = await self._storage.changes(tenant, cursor, limit + 1, wanted)
        items = rows[:limit]
        return Page(items, items[-1].version if items else cursor, has_more=len(rows) > limit)

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
    max_clock_offset: float = DEFAULT_MAX_CLOCK_OFFSET,
    clock: Clock | None = None,
) -> ServerCore:
    """Open the storage ``url`` names (see :func:`open_storage`) and a core over it.

    The other arguments are :class:`ServerCore`'s.

    Raises:
        ValueError: a URL that names no storage.
        RemoteError: the storage could not be opened.
    """
    core = ServerCore(
        open_storage(url),
        conflict_policy=conflict_policy,
        max_batch=max_batch,
        max_pull=max_pull,
        max_clock_offset=max_clock_offset,
        clock=clock,
    )
    try:
        await core.open()
    except BaseException:
        await core.aclose()
        raise
    return core
