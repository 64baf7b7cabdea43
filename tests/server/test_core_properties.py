"""Properties of the core over every storage: tenant isolation, storages agreeing.

Each hypothesis example runs its own event loop (``anyio.run``) on the same storage URL,
with fresh tenant names, so examples never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_store.backends import Change, PushResult, RemoteOp
from nexus_store.server._core import ServerCore, open_core
from nexus_store.server._rules import ConflictPolicy
from nexus_store.server.storage._memory import MemoryStorage


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


op_specs = st.lists(
    st.tuples(
        st.integers(0, 7),  # op id index (shared between tenants on purpose)
        st.sampled_from(["a", "b", 1]),
        st.sampled_from(["upsert", "upsert", "delete"]),
        st.integers(0, 9),  # data / base version
        st.integers(0, 40),  # stamp millis
    ),
    min_size=1,
    max_size=6,
)
batches = st.lists(st.tuples(st.sampled_from(["A", "B"]), op_specs), min_size=1, max_size=6)

OpSpec = tuple[int, str | int, str, int, int]


def build(specs: Sequence[OpSpec], salt: str) -> list[RemoteOp]:
    return [
        RemoteOp(
            op_id=f"{salt}-op{i}",
            collection="c",
            item_id=item,
            kind=kind,
            data={"n": n} if kind == "upsert" else None,
            base_version=n % 4,
            hlc=f"{millis:013d}-00000-x",
        )
        for i, item, kind, n, millis in specs
    ]


def run_scenario(url: str, scenario: list[tuple[str, list[OpSpec]]]) -> None:
    async def main() -> None:
        async with await open_core(url) as core:
            run = uuid.uuid4().hex[:10]
            a, b, solo = f"A-{run}", f"B-{run}", f"S-{run}"
            mixed: list[PushResult] = []
            alone: list[PushResult] = []
            for who, specs in scenario:
                # Tenant A reuses B's op ids (same salt): replaying them must not touch B.
                if who == "A":
                    await core.push(a, build(specs, "shared"))
                else:
                    mixed.append(await core.push(b, build(specs, "shared")))
            for who, specs in scenario:
                if who == "B":
                    alone.append(await core.push(solo, build(specs, "shared")))
            assert [r.results for r in mixed] == [r.results for r in alone]
            assert await pull_everything(core, b, limit=3) == await pull_everything(
                core, solo, limit=3
            )
            assert await core.head(b) == await core.head(solo)

    anyio.run(main)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(scenario=batches)
def test_tenant_a_never_changes_what_b_sees(
    storage_url: str, scenario: list[tuple[str, list[OpSpec]]]
) -> None:
    """Whatever tenant A pushes (even B's op ids), B's answers and pulls are as if alone."""
    run_scenario(storage_url, scenario)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(scenario=batches, limit=st.integers(1, 4), policy=st.sampled_from(["lww", "server_wins"]))
def test_storages_agree_with_memory(
    storage_url: str,
    scenario: list[tuple[str, list[OpSpec]]],
    limit: int,
    policy: ConflictPolicy,
) -> None:
    """Every storage gives the same answers and pulls as the in-memory one (shared rules)."""

    async def main() -> None:
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        reference = ServerCore(MemoryStorage(), conflict_policy=policy)
        async with await open_core(storage_url, conflict_policy=policy) as core:
            for who, specs in scenario:
                ops = build(specs, who)
                assert (await core.push(tenant, ops)).results == (
                    await reference.push(tenant, ops)
                ).results
                cursor = (await core.head(tenant)) // 2
                assert await core.pull(tenant, cursor, limit) == await reference.pull(
                    tenant, cursor, limit
                )
            assert await pull_everything(core, tenant, limit=limit) == await pull_everything(
                reference, tenant, limit=limit
            )

    anyio.run(main)
