"""The server core over every storage: policies, idempotency, pulls, limits, tenants."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from nexus_store import LifecycleError, PayloadTooLargeError, PermanentError
from nexus_store.backends import Change, Changes, OpStatus, PushResult, RemoteOp
from nexus_store.server._core import ServerCore, open_core
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.testing import OpWriter

pytestmark = pytest.mark.anyio


async def pull_everything(core: ServerCore, tenant: str, *, limit: int = 100) -> list[Change]:
    """Every change of a tenant, paging with the cursor."""
    out: list[Change] = []
    cursor = 0
    for _ in range(1000):
        page = await core.pull(tenant, cursor, limit)
        out.extend(page.changes)
        cursor = page.cursor
        if not page.has_more:
            return out
    raise AssertionError("too many pages")


def answers(result: PushResult) -> list[tuple[OpStatus, int | None]]:
    return [(r.status, r.version) for r in result.results]


async def test_lww_newer_stale_write_wins_and_older_conflicts(
    core: ServerCore, tenant: str
) -> None:
    """LWW in both directions: the newer stamp wins whichever arrives second."""
    w = OpWriter("notes")
    await core.push(tenant, [w.upsert("a", {"by": "first"}, millis=2_000)])
    older = await core.push(tenant, [w.upsert("a", {"by": "older"}, millis=1_000)])
    assert older.results[0].status is OpStatus.CONFLICT
    assert older.results[0].item is not None
    assert older.results[0].item.data == {"by": "first"}
    newer = await core.push(tenant, [w.upsert("a", {"by": "newer"}, millis=3_000)])
    assert newer.results[0].status is OpStatus.ACCEPTED
    [change] = await pull_everything(core, tenant)
    assert (change.data, change.version, change.hlc) == (
        {"by": "newer"},
        newer.results[0].version,
        "0000000003000-00002-dev",
    )


async def test_server_wins_keeps_the_server_copy(storage_url: str, tenant: str) -> None:
    """Under server_wins a stale write never lands, however new its stamp."""
    async with await open_core(storage_url, conflict_policy="server_wins") as core:
        w = OpWriter("notes")
        first = await core.push(tenant, [w.upsert("a", {"v": 1}, millis=1_000)])
        stale = await core.push(tenant, [w.upsert("a", {"v": 2}, millis=9_000)])
        assert stale.results[0].status is OpStatus.CONFLICT
        assert stale.results[0].item is not None
        assert stale.results[0].item.version == first.results[0].version
        fresh = await core.push(
            tenant, [w.upsert("a", {"v": 3}, base=first.results[0].version or 0)]
        )
        assert fresh.results[0].status is OpStatus.ACCEPTED
        assert [c.data for c in await pull_everything(core, tenant)] == [{"v": 3}]


async def test_custom_resolver_merges_and_replays_its_answer(storage_url: str, tenant: str) -> None:
    """A resolver's merge is stored, returned as the item, pulled, and replayed unchanged."""

    def merge(op: RemoteOp, server: Change) -> dict[str, Any]:
        tags = sorted({*(server.data or {}).get("tags", []), *(op.data or {}).get("tags", [])})
        return {"tags": tags}

    async with await open_core(storage_url, conflict_policy=merge) as core:
        phone, laptop = OpWriter("notes", node="p"), OpWriter("notes", node="l")
        await core.push(tenant, [phone.upsert("a", {"tags": ["x", "y"]}, millis=5_000)])
        stale = laptop.upsert("a", {"tags": ["z"]}, millis=1_000)
        result = (await core.push(tenant, [stale])).results[0]
        assert result.status is OpStatus.ACCEPTED
        assert result.item is not None
        assert result.item.data == {"tags": ["x", "y", "z"]}
        assert result.item.version == result.version
        [change] = await pull_everything(core, tenant)
        assert change == result.item
        assert (await core.push(tenant, [stale])).results[0] == result


async def test_resolver_failure_retries_until_it_works(storage_url: str, tenant: str) -> None:
    """RETRY from a failing resolver is not recorded: the same op is decided again later."""
    calls: list[int] = []

    def flaky(op: RemoteOp, server: Change) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not yet")
        return {"merged": True}

    async with await open_core(storage_url, conflict_policy=flaky) as core:
        w = OpWriter("notes")
        await core.push(tenant, [w.upsert("a", {"v": 1}, millis=5_000)])
        stale = w.upsert("a", {"v": 2}, millis=1_000)
        first = (await core.push(tenant, [stale])).results[0]
        assert first.status is OpStatus.RETRY
        assert "not yet" in (first.reason or "")
        head = await core.head(tenant)
        second = (await core.push(tenant, [stale])).results[0]
        assert second.status is OpStatus.ACCEPTED
        assert second.version == head + 1


async def test_same_batch_twice_has_one_effect(core: ServerCore, tenant: str) -> None:
    """A replayed batch gets the same answers and leaves the head and the data alone."""
    w = OpWriter("notes")
    ops = [w.upsert("a", {"v": 1}), w.upsert("b", {"v": 2}), w.delete("a", base=1)]
    first = await core.push(tenant, ops)
    head, before = await core.head(tenant), await pull_everything(core, tenant)
    again = await core.push(tenant, ops)
    assert again.results == first.results
    assert await core.head(tenant) == head == 3
    assert await pull_everything(core, tenant) == before


async def test_concurrent_pushes_of_one_batch_have_one_effect(
    core: ServerCore, tenant: str
) -> None:
    """Five concurrent pushes of one batch apply it once and all get the same answers."""
    w = OpWriter("notes")
    ops = [w.upsert(f"i{n}", {"n": n}) for n in range(50)]
    results: list[PushResult] = []

    async def push() -> None:
        results.append(await core.push(tenant, ops))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(push)
    assert all(r.results == results[0].results for r in results)
    assert await core.head(tenant) == 50
    assert len(await pull_everything(core, tenant)) == 50


async def test_reused_op_id_with_another_payload_is_refused(core: ServerCore, tenant: str) -> None:
    """Reusing an op id with another payload is refused and changes nothing."""
    w = OpWriter("notes")
    original = w.upsert("a", {"v": 1})
    await core.push(tenant, [original])
    for forged in (
        w.upsert("a", {"v": 2}, op_id=original.op_id),
        w.delete("a", op_id=original.op_id),
        w.upsert("b", {"v": 1}, op_id=original.op_id),
    ):
        answer = (await core.push(tenant, [forged])).results[0]
        assert answer.status is OpStatus.REJECTED
    assert [(c.item_id, c.data) for c in await pull_everything(core, tenant)] == [("a", {"v": 1})]
    assert await core.head(tenant) == 1


async def test_pulls_page_through_states_and_tombstones(core: ServerCore, tenant: str) -> None:
    """Pulls return latest states and tombstones after the cursor, in version order."""
    w = OpWriter("notes")
    await core.push(tenant, [w.upsert(i, {"i": i}) for i in range(6)])  # versions 1..6
    await core.push(tenant, [w.delete(1, base=2), w.upsert(3, {"i": 30}, base=4)])  # 7, 8
    await core.push(tenant, [w.delete(0, base=1)])  # 9
    page = await core.pull(tenant, 0, 2)
    assert [(c.item_id, c.version) for c in page.changes] == [(2, 3), (4, 5)]
    assert (page.cursor, page.has_more) == (5, True)
    page = await core.pull(tenant, page.cursor, 10)
    assert [(c.item_id, c.version, c.deleted, c.data) for c in page.changes] == [
        (5, 6, False, {"i": 5}),
        (1, 7, True, None),
        (3, 8, False, {"i": 30}),
        (0, 9, True, None),
    ]
    assert (page.cursor, page.has_more) == (9, False)
    end = await core.pull(tenant, 9, 10)
    assert end == Changes(changes=[], cursor=9, has_more=False)


async def test_pull_filters_by_collection(core: ServerCore, tenant: str) -> None:
    """Only the named collections come back; an empty list returns nothing."""
    a, b, c = OpWriter("a"), OpWriter("b"), OpWriter("c")
    await core.push(tenant, [a.upsert(1, {}), b.upsert(1, {}), c.upsert(1, {}), a.upsert(2, {})])
    page = await core.pull(tenant, 0, 10, collections=["a", "c", "a"])
    assert [(ch.collection, ch.item_id) for ch in page.changes] == [("a", 1), ("c", 1), ("a", 2)]
    page = await core.pull(tenant, 0, 1, collections=["b"])
    assert ([(ch.collection, ch.version) for ch in page.changes], page.has_more) == (
        [("b", 2)],
        False,
    )
    assert await core.pull(tenant, 0, 10, collections=[]) == Changes(changes=[], cursor=0)


async def test_limits_are_enforced() -> None:
    """Oversized batches are refused whole; pull limits clamp; bad cursors are refused."""
    core = ServerCore(MemoryStorage(), max_batch=3, max_pull=2)
    w = OpWriter("n")
    with pytest.raises(PayloadTooLargeError, match="limit of 3"):
        await core.push("t", [w.upsert(i, {}) for i in range(4)])
    assert await core.head("t") == 0
    await core.push("t", [w.upsert(i, {}) for i in range(3)])
    page = await core.pull("t", 0, 100)
    assert (len(page.changes), page.has_more) == (2, True)
    for cursor, limit in ((-1, 10), (0, 0)):
        with pytest.raises(PermanentError):
            await core.pull("t", cursor, limit)
    assert (await core.push("t", [])).results == []
    with pytest.raises(ValueError, match="max_batch"):
        ServerCore(MemoryStorage(), max_batch=0)
    with pytest.raises(ValueError, match="conflict_policy"):
        ServerCore(MemoryStorage(), conflict_policy="newest")  # type: ignore[arg-type]


@pytest.mark.parametrize("tenant_name", ["", "x" * 257, "a\x00b"])
async def test_unusable_tenant_names_are_refused(tenant_name: str) -> None:
    """Empty, overlong and NUL-holding tenant names raise ValueError."""
    core = ServerCore(MemoryStorage())
    with pytest.raises(ValueError, match="tenant"):
        await core.push(tenant_name, [])
    with pytest.raises(ValueError, match="tenant"):
        await core.pull(tenant_name)


async def test_closed_core_refuses_work(storage_url: str) -> None:
    """After aclose every call raises LifecycleError; aclose is idempotent."""
    core = await open_core(storage_url)
    await core.aclose()
    await core.aclose()
    for call in (core.push("t", []), core.pull("t"), core.head("t"), core.open()):
        with pytest.raises(LifecycleError):
            await call


async def test_heads_are_per_tenant(core: ServerCore, tenant: str) -> None:
    """Each tenant's sequence starts at 1 and advances only with its own changes."""
    other = f"{tenant}-other"
    w = OpWriter("n")
    await core.push(tenant, [w.upsert(1, {}), w.upsert(2, {})])
    assert (await core.head(tenant), await core.head(other)) == (2, 0)
    answer = await core.push(other, [w.upsert(1, {})])
    assert answer.results[0].version == 1
    assert (await core.head(tenant), await core.head(other)) == (2, 1)
