"""Two server processes on one PostgreSQL serve the same tenant side by side."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anyio
import pytest

from nexus_store.backends import HttpBackend, OpStatus, PushResult, RemoteOp
from nexus_store.server._auth import SignedTokenVerifier
from nexus_store.testing import OpWriter, ServerProcess, pull_all

pytestmark = pytest.mark.postgres

SECRET = "two-servers-secret-0123456789abc"
signer = SignedTokenVerifier(SECRET)


@pytest.fixture(scope="module")
def servers(postgres_dsn: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two `nexus-store serve` processes on the same PostgreSQL database."""
    with (
        ServerProcess(postgres_dsn, secret=SECRET, events_interval=0.05) as first,
        ServerProcess(postgres_dsn, secret=SECRET, events_interval=0.05) as second,
    ):
        yield first, second


@pytest.mark.anyio
async def test_both_accept_pushes_with_one_consistent_sequence(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """Concurrent pushes via both servers get distinct gap-free versions; both pull the same."""
    token = signer.issue(f"two-{uuid.uuid4().hex[:10]}")
    batches: list[tuple[list[RemoteOp], PushResult]] = []

    async def client(server: ServerProcess, name: str) -> None:
        writer = OpWriter("notes", node=name)
        async with HttpBackend(server.base_url, token=token) as remote:
            for batch in range(15):
                ops = [writer.upsert(f"{name}-{batch}-{i}", {"by": name}) for i in range(8)]
                ops.append(writer.upsert(f"shared-{batch % 3}", {"by": name}))
                batches.append((ops, await remote.push(ops)))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client, servers[0], "one")
            tg.start_soon(client, servers[1], "two")
        async with (
            HttpBackend(servers[0].base_url, token=token) as via_first,
            HttpBackend(servers[1].base_url, token=token) as via_second,
        ):
            pulled_first, cursor_first = await pull_all(via_first, "notes", limit=13)
            pulled_second, cursor_second = await pull_all(via_second, "notes", limit=29)

    accepted: list[int] = []
    for ops, answer in batches:
        assert [r.op_id for r in answer.results] == [op.op_id for op in ops]
        for result in answer.results:
            assert result.status in (OpStatus.ACCEPTED, OpStatus.CONFLICT)
            if result.status is OpStatus.ACCEPTED:
                assert result.version is not None
                accepted.append(result.version)
    assert sorted(accepted) == list(range(1, len(accepted) + 1)), "distinct, gap-free versions"
    assert pulled_first == pulled_second
    assert cursor_first == cursor_second == max(accepted)
    versions = [c.version for c in pulled_first]
    assert versions == sorted(versions)
    assert len({c.item_id for c in pulled_first}) == len(pulled_first) == 2 * 15 * 8 + 3


@pytest.mark.anyio
async def test_a_push_on_one_server_pokes_listeners_of_the_other(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """An event-stream listener on server two learns of a push accepted by server one."""
    token = signer.issue(f"poke-{uuid.uuid4().hex[:10]}")
    writer = OpWriter("notes")
    async with (
        HttpBackend(servers[1].base_url, token=token) as listener,
        HttpBackend(servers[0].base_url, token=token) as pusher,
    ):
        with anyio.fail_after(20):
            async with listener.watch() as heads:
                assert await anext(heads) == 0
                await pusher.push([writer.upsert("n1", {"id": "n1"})])
                assert await anext(heads) == 1
