"""Tenant isolation over HTTP, with generated requests.

Two tenants interleave pushes on one real server (SQLite storage): writes to the same
collections and item ids, reused op ids, and exact replays of each other's ops. Whatever
the interleaving, each tenant must see exactly what it would see alone: its answers and
its pulled changes equal those of a private in-process core that received only its own
ops. So tenant A's token can neither read, write, pull nor replay (with effect) anything
of tenant B's.
"""

from __future__ import annotations

import itertools
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_store.backends import Change, HttpBackend, MemoryBackend, RemoteBackend, RemoteOp
from nexus_store.server._auth import SignedTokenVerifier
from nexus_store.testing import ServerProcess

SECRET = "isolation-secret-0123456789abcdef"
signer = SignedTokenVerifier(SECRET)
_stamps = itertools.count(1)
_TLS = ssl.create_default_context()  # built once: loading CA certificates per client is slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for every generated example; each example uses two fresh tenants."""
    db: Path = tmp_path_factory.mktemp("isolation") / "server.db"
    with ServerProcess(f"sqlite:///{db}?durability=normal", secret=SECRET) as process:
        yield process


@dataclass(frozen=True)
class Write:
    """A new op by ``actor``."""

    actor: int
    collection: str
    item_id: str | int
    kind: str
    op_id: str
    value: int


@dataclass(frozen=True)
class Replay:
    """``actor`` re-sends, byte for byte, the ``index``-th op sent so far (by anyone)."""

    actor: int
    index: int


writes = st.builds(
    Write,
    actor=st.integers(0, 1),
    collection=st.sampled_from(["notes", "tags"]),
    item_id=st.sampled_from(["x", "y", 1, 2]),
    kind=st.sampled_from(["upsert", "upsert", "delete"]),
    op_id=st.sampled_from([f"shared-{i}" for i in range(4)]),
    value=st.integers(0, 3),
)
replays = st.builds(Replay, actor=st.integers(0, 1), index=st.integers(0, 30))
actions = st.lists(st.one_of(writes, writes, replays), min_size=1, max_size=12)


def to_op(write: Write) -> RemoteOp:
    data = {"id": write.item_id, "v": write.value} if write.kind == "upsert" else None
    return RemoteOp(
        op_id=write.op_id,
        collection=write.collection,
        item_id=write.item_id,
        kind=write.kind,
        data=data,
        hlc=f"{1_700_000_000_000 + next(_stamps):013d}-00000-gen",
    )


async def pull_everything(backend: RemoteBackend) -> list[Change]:
    cursor, out = 0, []
    for _ in range(100):
        page = await backend.pull(cursor, 7)
        out.extend(page.changes)
        cursor = page.cursor
        if not page.has_more:
            return out
    raise AssertionError("pull did not finish")


@pytest.mark.anyio
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=actions)
async def test_each_tenant_sees_exactly_what_it_would_see_alone(
    server: ServerProcess, plan: list[Write | Replay]
) -> None:
    """Interleaved tenants get the answers and changes of a private server holding only theirs."""
    tenants = [f"iso-{uuid.uuid4().hex[:10]}", f"iso-{uuid.uuid4().hex[:10]}"]
    sent: list[RemoteOp] = []
    per_tenant: list[list[RemoteOp]] = [[], []]
    answers: list[list[tuple[str, int | None]]] = [[], []]
    with anyio.fail_after(60):
        clients = [
            HttpBackend(server.base_url, token=signer.issue(t), verify=_TLS) for t in tenants
        ]
        async with clients[0], clients[1]:
            for action in plan:
                if isinstance(action, Replay):
                    if not sent:
                        continue
                    op = sent[action.index % len(sent)]
                else:
                    op = to_op(action)
                    sent.append(op)
                result = (await clients[action.actor].push([op])).results[0]
                per_tenant[action.actor].append(op)
                answers[action.actor].append((result.status.value, result.version))
            pulled = [await pull_everything(c) for c in clients]

        for who in (0, 1):
            async with MemoryBackend() as alone:
                expected = []
                for op in per_tenant[who]:
                    result = (await alone.push([op])).results[0]
                    expected.append((result.status.value, result.version))
                assert answers[who] == expected
                assert pulled[who] == await pull_everything(alone)
