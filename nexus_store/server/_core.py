"""The server core: the rules of the sync server, written once for every storage.

The rules are pure functions of plain values (:func:`._prepare.prepare` in
:mod:`._prepare`, :func:`._rules.decide` and :func:`._rules.plan_batch` in :mod:`._rules`);
a :class:`~nexus_store.server.storage.Storage` runs ``plan_batch`` inside its transaction
and :class:`ServerCore` ties the two together.

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
- **Echo suppression.** A push may name its writer (a sync run's random id); a pull that
  names the same writer leaves out the items whose latest state that writer made (the
  client has them already), while every change by anyone else still comes. Such a page's
  cursor moves to the tenant's head as read *before* the page (every change up to it is
  committed, in sequence), so a client whose own pushes were all that happened skips them
  without downloading them.
- **Tenants** share nothing: the tenant is part of every key, op ids included.
- **Bounded clocks.** An op stamped more than ``max_clock_offset`` seconds ahead of the
  server's clock is applied re-stamped with the server's time (see
  :mod:`._clock_bound`), so a device whose clock runs fast cannot win every conflict.

Item data is stored as msgpack with its map keys sorted, so two payloads that are equal
as values have one fingerprint whatever their key order. Data nested deeper than 64
levels is refused (``REJECTED``, not recorded) before anything recurses over it.

The hot path deals in plain values: :func:`._prepare.prepare_wire` takes an op as decoded from a
msgpack body (falling back to full validation only for what is not already of the wire
types), and answers are plain dicts that the HTTP layer encodes once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

from .._clock import Clock, SystemClock
from .._exceptions import LifecycleError, PayloadTooLargeError, PermanentError
from .._gc import collector_paused
from .._remote import Changes, PushResult, RemoteOp
from ._clock_bound import DEFAULT_MAX_CLOCK_OFFSET, bound_stamps, check_max_offset
from ._prepare import PreparedOp, prepare
from ._rules import Answer, ConflictPolicy, Page, change_fields, plan_batch
from .storage._base import BatchPlan, BatchState, Storage
from .storage._open import open_storage

__all__ = ["ServerCore", "check_tenant", "open_core"]

_MAX_TENANT = 256


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
        conflict_policy: ``"lww"`` (default), ``"server_wins"`` or a :data:`~._rules.Resolver`.
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

    async def push(
        self, tenant: str, ops: Sequence[RemoteOp], *, writer: int | None = None
    ) -> PushResult:
        """Apply a batch of ops for ``tenant``; one result per op, in order.

        Raises:
            PayloadTooLargeError: more than ``max_batch`` ops.
            RemoteError: the storage failed (nothing of the batch was applied).
            LifecycleError: the core was closed.
        """
        self._check_batch(tenant, len(ops))
        answers = await self.apply(tenant, [prepare(op) for op in ops], writer=writer)
        return PushResult.model_validate({"results": answers})

    async def apply(
        self, tenant: str, ops: Sequence[PreparedOp], *, writer: int | None = None
    ) -> list[Answer]:
        """:meth:`push` for prepared ops, answering plain dicts (what the server sends).

        ``writer`` (a sync run's id) is recorded on the items the batch writes (see
        :meth:`page`).

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
            with collector_paused():  # a plan is thousands of new containers, no garbage
                return plan_batch(ops, state, policy=policy)

        plan = await self._storage.apply(tenant, keys, op_ids, planner, writer=writer)
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
        skip_writer: int | None = None,
    ) -> Changes:
        """Return ``tenant``'s changes after ``cursor`` (at most ``min(limit, max_pull)``),
        without those ``skip_writer`` made (see :meth:`page`).

        Raises:
            PermanentError: a negative cursor or a limit below 1.
            RemoteError: the storage failed.
            LifecycleError: the core was closed.
        """
        page = await self.page(
            tenant, cursor, limit, collections=collections, skip_writer=skip_writer
        )
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
        skip_writer: int | None = None,
    ) -> Page:
        """:meth:`pull` as stored states (data still encoded): what the server sends.

        With ``skip_writer``, items whose latest state that writer made are left out, and
        a page that is not full moves the cursor to the head read before it (echo
        suppression: see the module docstring).

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
        if skip_writer is None:
            rows = await self._storage.changes(tenant, cursor, limit + 1, wanted)
            items = rows[:limit]
            return Page(items, items[-1].version if items else cursor, has_more=len(rows) > limit)
        # Every change up to the head read first is committed (changes commit in sequence
        # order): a page that holds all of the others' up to it may move the cursor there.
        head = await self._storage.head(tenant)
        rows = await self._storage.changes(
            tenant, cursor, limit + 1, wanted, skip_writer=skip_writer, upto=head
        )
        items = rows[:limit]
        if len(rows) > limit:
            return Page(items, items[-1].version, has_more=True)
        return Page(items, max(cursor, head), has_more=False)

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
