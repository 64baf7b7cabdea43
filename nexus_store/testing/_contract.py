"""The backend contract suite: the behaviour every :class:`RemoteBackend` must have.

Subclass one of the classes in a pytest module and provide a ``backend_factory`` fixture
that returns a callable making a new client for a tenant name::

    import pytest
    from nexus_store.testing import MultiTenantBackendContract

    class TestMyBackend(MultiTenantBackendContract):
        @pytest.fixture
        def backend_factory(self):
            return lambda tenant: MyBackend("https://...", tenant=tenant)

:class:`BackendContract` needs nothing but one account: each test writes to a fresh
collection and pulls only that collection (so a shared, non-empty server is fine), and
it may ignore the tenant name. :class:`MultiTenantBackendContract` adds the isolation
checks and needs ``backend_factory(tenant)`` to honour the name. Every client the suite
makes is closed at the end of its test. The tests are anyio tests (the ``anyio``
pytest plugin, which comes with anyio, runs them; asyncio unless you override the
``anyio_backend`` fixture). The conflict checks expect the default policy,
last-writer-wins by the ops' hybrid logical clock stamps.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pytest

from .._remote import Change, ItemId, OpResult, OpStatus, PushResult, RemoteBackend, RemoteOp

__all__ = [
    "BackendContract",
    "BackendFactory",
    "MultiTenantBackendContract",
    "OpWriter",
    "pull_all",
]

BackendFactory = Callable[[str], RemoteBackend]
"""Makes a new client of the backend under test for the given tenant name."""

_MAX_PAGES = 1000


class OpWriter:
    """Builds ops for one collection with fresh op ids and increasing HLC stamps.

    Args:
        collection: where the ops write.
        node: the HLC node id (one per simulated device).
        millis: the wall time of the first stamp, in milliseconds.
    """

    def __init__(self, collection: str, *, node: str = "dev", millis: int = 1_700_000_000_000):
        self.collection = collection
        self.node = node
        self._millis = millis
        self._counter = itertools.count()

    def stamp(self, millis: int | None = None) -> str:
        """A new stamp (at ``millis`` if given: lets a test order writes across devices)."""
        if millis is None:
            self._millis += 1
            millis = self._millis
        return f"{millis:013d}-{next(self._counter) % 100_000:05d}-{self.node}"

    def upsert(
        self,
        item_id: ItemId,
        data: dict[str, Any],
        *,
        base: int = 0,
        millis: int | None = None,
        op_id: str | None = None,
    ) -> RemoteOp:
        """An upsert based on server version ``base``."""
        return RemoteOp(
            op_id=op_id or uuid.uuid4().hex,
            collection=self.collection,
            item_id=item_id,
            kind="upsert",
            data=data,
            base_version=base,
            hlc=self.stamp(millis),
        )

    def delete(
        self, item_id: ItemId, *, base: int = 0, millis: int | None = None, op_id: str | None = None
    ) -> RemoteOp:
        """A delete based on server version ``base``."""
        return RemoteOp(
            op_id=op_id or uuid.uuid4().hex,
            collection=self.collection,
            item_id=item_id,
            kind="delete",
            base_version=base,
            hlc=self.stamp(millis),
        )


async def pull_all(
    backend: RemoteBackend, collection: str, *, cursor: int = 0, limit: int = 100
) -> tuple[list[Change], int]:
    """Page through a collection's changes after ``cursor``; return them and the last cursor."""
    out: list[Change] = []
    for _ in range(_MAX_PAGES):
        page = await backend.pull(cursor, limit, collections=[collection])
        assert page.cursor >= cursor, "a pull must never move the cursor backwards"
        out.extend(page.changes)
        cursor = page.cursor
        if not page.has_more:
            return out, cursor
    raise AssertionError(f"pull still had more after {_MAX_PAGES} pages")


def _check_shape(result: PushResult, ops: Sequence[RemoteOp]) -> list[OpResult]:
    assert [r.op_id for r in result.results] == [op.op_id for op in ops], (
        "a push answers one result per op, in the order sent"
    )
    return result.results


class BackendContract:
    """Checks every backend must pass (one account is enough; see the module docstring)."""

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        """Override: return ``(tenant) -> RemoteBackend`` making a new client."""
        raise NotImplementedError("define a backend_factory fixture in the subclass")

    @pytest.fixture
    async def connect(self, backend_factory: BackendFactory) -> AsyncIterator[BackendFactory]:
        """Makes clients that are closed when the test ends."""
        made: list[RemoteBackend] = []

        def connect(tenant: str) -> RemoteBackend:
            backend = backend_factory(tenant)
            made.append(backend)
            return backend

        yield connect
        for backend in made:
            await backend.aclose()

    @pytest.fixture
    def tenant(self) -> str:
        """A tenant name no other test uses."""
        return f"contract-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def writer(self) -> OpWriter:
        """Ops for a collection no other test uses."""
        return OpWriter(f"c_{uuid.uuid4().hex[:12]}")

    @pytest.fixture
    def backend(self, connect: BackendFactory, tenant: str) -> RemoteBackend:
        """One client of the backend under test."""
        return connect(tenant)

    @pytest.mark.anyio
    async def test_push_accepts_new_items_with_increasing_versions(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """New items are accepted, one result per op in order, versions increasing."""
        ops = [writer.upsert(f"i{n}", {"n": n}) for n in range(3)]
        results = _check_shape(await backend.push(ops), ops)
        assert all(r.status is OpStatus.ACCEPTED for r in results)
        versions = [r.version or 0 for r in results]
        assert all(v >= 1 for v in versions)
        assert versions == sorted(versions)
        assert len(set(versions)) == 3

    @pytest.mark.anyio
    async def test_empty_push_answers_nothing(self, backend: RemoteBackend) -> None:
        """A push of no ops succeeds with no results."""
        assert (await backend.push([])).results == []

    @pytest.mark.anyio
    async def test_versions_increase_across_batches(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """A later batch's changes get higher versions than an earlier batch's."""
        first = await backend.push([writer.upsert("a", {"v": 1})])
        second = await backend.push([writer.upsert("b", {"v": 2})])
        assert first.results[0].version is not None
        assert second.results[0].version is not None
        assert second.results[0].version > first.results[0].version

    @pytest.mark.anyio
    async def test_pull_returns_latest_state_per_item(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """An item written twice is pulled once, in its latest state and version."""
        v1 = (await backend.push([writer.upsert("a", {"text": "one"})])).results[0].version
        assert v1 is not None
        result = await backend.push([writer.upsert("a", {"text": "two"}, base=v1)])
        assert result.results[0].status is OpStatus.ACCEPTED
        changes, _ = await pull_all(backend, writer.collection)
        assert [(c.item_id, c.data, c.deleted) for c in changes] == [("a", {"text": "two"}, False)]
        assert changes[0].version == result.results[0].version

    @pytest.mark.anyio
    async def test_replayed_batch_has_one_effect(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """Pushing the same batch again returns the same answers and changes nothing."""
        ops = [writer.upsert("a", {"n": 1}), writer.upsert("b", {"n": 2}), writer.delete("c")]
        first = await backend.push(ops)
        changes, cursor = await pull_all(backend, writer.collection)
        again = await backend.push(ops)
        assert [(r.status, r.version) for r in again.results] == [
            (r.status, r.version) for r in first.results
        ]
        assert (await pull_all(backend, writer.collection, cursor=cursor))[0] == []
        assert (await pull_all(backend, writer.collection))[0] == changes

    @pytest.mark.anyio
    async def test_concurrent_replays_have_one_effect(
        self, connect: BackendFactory, tenant: str, writer: OpWriter
    ) -> None:
        """The same batch pushed by two clients at once is applied once."""
        ops = [writer.upsert(f"i{n}", {"n": n}) for n in range(20)]
        clients = [connect(tenant) for _ in range(3)]
        answers: list[PushResult] = []

        async def push(client: RemoteBackend) -> None:
            answers.append(await client.push(ops))

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(push, client)
        expected = [(r.status, r.version) for r in answers[0].results]
        assert all(s is OpStatus.ACCEPTED for s, _ in expected)
        for answer in answers[1:]:
            assert [(r.status, r.version) for r in answer.results] == expected
        changes, _ = await pull_all(clients[0], writer.collection)
        assert sorted(c.version for c in changes) == sorted(v for _, v in expected if v)

    @pytest.mark.anyio
    async def test_reused_op_id_with_other_payload_is_rejected(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """An op id already answered, sent with another payload, is refused with a reason."""
        original = writer.upsert("a", {"text": "original"})
        await backend.push([original])
        forged = writer.upsert("a", {"text": "forged"}, op_id=original.op_id)
        answer = (await backend.push([forged])).results[0]
        assert answer.status is OpStatus.REJECTED
        assert answer.reason
        changes, _ = await pull_all(backend, writer.collection)
        assert [c.data for c in changes] == [{"text": "original"}]
        replay = (await backend.push([original])).results[0]
        assert replay.status is OpStatus.ACCEPTED

    @pytest.mark.anyio
    async def test_ops_of_one_item_apply_in_order_sent(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """Ops for one item in one batch apply in the order sent, each after the last."""
        ops = [
            writer.upsert("a", {"step": 1}),
            writer.upsert("a", {"step": 2}),
            writer.delete("a"),
            writer.upsert("a", {"step": 4}),
        ]
        results = _check_shape(await backend.push(ops), ops)
        assert all(r.status is OpStatus.ACCEPTED for r in results)
        versions = [r.version or 0 for r in results]
        assert versions == sorted(versions)
        assert len(set(versions)) == 4
        changes, _ = await pull_all(backend, writer.collection)
        assert [(c.data, c.deleted, c.version) for c in changes] == [
            ({"step": 4}, False, versions[-1])
        ]

    @pytest.mark.anyio
    async def test_write_based_on_current_version_is_accepted(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """A write based on the current version is no conflict, whatever its stamp."""
        v1 = await backend.push([writer.upsert("a", {"n": 1}, millis=2_000_000_000_000)])
        base = v1.results[0].version
        assert base is not None
        answer = (await backend.push([writer.upsert("a", {"n": 2}, base=base, millis=1)])).results[
            0
        ]
        assert answer.status is OpStatus.ACCEPTED

    @pytest.mark.anyio
    async def test_stale_older_write_conflicts_with_server_copy(
        self, connect: BackendFactory, tenant: str, writer: OpWriter
    ) -> None:
        """A stale write with an older stamp is a conflict carrying the server's copy."""
        phone, laptop = connect(tenant), connect(tenant)
        late = OpWriter(writer.collection, node="late")
        early = OpWriter(writer.collection, node="early")
        stored = await phone.push([late.upsert("a", {"by": "phone"}, millis=2_000)])
        stale = early.upsert("a", {"by": "laptop"}, millis=1_000)
        answer = (await laptop.push([stale])).results[0]
        assert answer.status is OpStatus.CONFLICT
        assert answer.item is not None
        assert answer.item.data == {"by": "phone"}
        assert answer.item.version == stored.results[0].version
        changes, _ = await pull_all(laptop, writer.collection)
        assert [c.data for c in changes] == [{"by": "phone"}]

    @pytest.mark.anyio
    async def test_stale_newer_write_wins_by_default(
        self, connect: BackendFactory, tenant: str, writer: OpWriter
    ) -> None:
        """By default a stale write with a newer stamp wins (last writer wins)."""
        phone, laptop = connect(tenant), connect(tenant)
        await phone.push(
            [OpWriter(writer.collection, node="p").upsert("a", {"by": "phone"}, millis=1_000)]
        )
        newer = OpWriter(writer.collection, node="l").upsert("a", {"by": "laptop"}, millis=2_000)
        answer = (await laptop.push([newer])).results[0]
        assert answer.status is OpStatus.ACCEPTED
        changes, _ = await pull_all(phone, writer.collection)
        assert [(c.data, c.version) for c in changes] == [({"by": "laptop"}, answer.version)]

    @pytest.mark.anyio
    async def test_delete_is_pulled_as_tombstone(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """A deleted item comes back from a pull as a tombstone with the delete's version."""
        created = await backend.push([writer.upsert("a", {"n": 1})])
        _, cursor = await pull_all(backend, writer.collection)
        base = created.results[0].version
        assert base is not None
        deleted = (await backend.push([writer.delete("a", base=base)])).results[0]
        assert deleted.status is OpStatus.ACCEPTED
        changes, _ = await pull_all(backend, writer.collection, cursor=cursor)
        assert [(c.item_id, c.deleted, c.data, c.version) for c in changes] == [
            ("a", True, None, deleted.version)
        ]

    @pytest.mark.anyio
    async def test_cursor_pages_cover_every_change_once(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """Paging with the returned cursor yields every change once, in version order."""
        ops = [writer.upsert(f"i{n}", {"n": n}) for n in range(7)]
        pushed = await backend.push(ops)
        seen: list[Change] = []
        cursor, pages = 0, 0
        while True:
            page = await backend.pull(cursor, 3, collections=[writer.collection])
            assert len(page.changes) <= 3
            seen.extend(page.changes)
            pages += 1
            if not page.has_more:
                break
            assert page.changes
            assert page.cursor == page.changes[-1].version
            cursor = page.cursor
            assert pages < 10
        assert pages >= 3
        assert [c.version for c in seen] == sorted(r.version or 0 for r in pushed.results)
        assert sorted(str(c.item_id) for c in seen) == sorted(f"i{n}" for n in range(7))
        last = await backend.pull(page.cursor, 3, collections=[writer.collection])
        assert (last.changes, last.has_more, last.cursor) == ([], False, page.cursor)

    @pytest.mark.anyio
    async def test_collections_filter_limits_pull(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """A pull for some collections returns only their changes."""
        other = OpWriter(f"{writer.collection}_other")
        await backend.push([writer.upsert("a", {"n": 1}), other.upsert("b", {"n": 2})])
        mine, _ = await pull_all(backend, writer.collection)
        theirs, _ = await pull_all(backend, other.collection)
        assert [(c.collection, c.item_id) for c in mine] == [(writer.collection, "a")]
        assert [(c.collection, c.item_id) for c in theirs] == [(other.collection, "b")]

    @pytest.mark.anyio
    async def test_integer_and_string_ids_are_distinct_items(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """Item ids keep their type: 1 and "1" are two items."""
        await backend.push([writer.upsert(1, {"t": "int"}), writer.upsert("1", {"t": "str"})])
        changes, _ = await pull_all(backend, writer.collection)
        assert sorted(
            (type(c.item_id).__name__, c.data["t"] if c.data else None) for c in changes
        ) == [
            ("int", "int"),
            ("str", "str"),
        ]

    @pytest.mark.anyio
    async def test_upsert_without_data_is_rejected(
        self, backend: RemoteBackend, writer: OpWriter
    ) -> None:
        """An upsert carrying no data is refused with a reason; the rest of the batch applies."""
        bad = RemoteOp(
            op_id=uuid.uuid4().hex,
            collection=writer.collection,
            item_id="x",
            kind="upsert",
            hlc=writer.stamp(),
        )
        good = writer.upsert("y", {"n": 1})
        results = _check_shape(await backend.push([bad, good]), [bad, good])
        assert results[0].status is OpStatus.REJECTED
        assert results[0].reason
        assert results[1].status is OpStatus.ACCEPTED
        changes, _ = await pull_all(backend, writer.collection)
        assert [c.item_id for c in changes] == ["y"]


class MultiTenantBackendContract(BackendContract):
    """:class:`BackendContract` plus tenant isolation (``backend_factory`` honours tenants)."""

    @pytest.mark.anyio
    async def test_tenants_do_not_see_each_other(
        self, connect: BackendFactory, tenant: str, writer: OpWriter
    ) -> None:
        """One tenant's writes are invisible to another and never touch its items."""
        a, b = connect(tenant), connect(f"{tenant}-b")
        await a.push([writer.upsert("shared-id", {"owner": "a"})])
        assert (await pull_all(b, writer.collection))[0] == []
        await b.push([writer.upsert("shared-id", {"owner": "b"})])
        assert [c.data for c in (await pull_all(a, writer.collection))[0]] == [{"owner": "a"}]
        assert [c.data for c in (await pull_all(b, writer.collection))[0]] == [{"owner": "b"}]

    @pytest.mark.anyio
    async def test_op_ids_are_per_tenant(
        self, connect: BackendFactory, tenant: str, writer: OpWriter
    ) -> None:
        """Another tenant reusing an op id gets its own answer and changes nothing here."""
        a, b = connect(tenant), connect(f"{tenant}-b")
        original = writer.upsert("x", {"owner": "a"})
        first = (await a.push([original])).results[0]
        reuse = writer.upsert("x", {"owner": "b"}, op_id=original.op_id)
        assert (await b.push([reuse])).results[0].status is OpStatus.ACCEPTED
        assert (await b.push([original])).results[0].status is OpStatus.REJECTED
        replay = (await a.push([original])).results[0]
        assert (replay.status, replay.version) == (first.status, first.version)
        assert [c.data for c in (await pull_all(a, writer.collection))[0]] == [{"owner": "a"}]
