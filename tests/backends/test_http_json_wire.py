"""The JSON wire format never sends a value other than the one saved: an op holding a
number JSON cannot write (inf, NaN) is refused by itself, with the reason, and the rest of
its batch goes. Against a real ``nexus-store serve`` on 127.0.0.1."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from nexus_store import NexusStore
from nexus_store.backends import HttpBackend, RemoteOp
from nexus_store.backends._http_wire import UnsendableOpsError, encode_ops
from nexus_store.testing import ServerProcess

_TOKEN = "json-wire-token"
pytestmark = pytest.mark.anyio


class Reading(BaseModel):
    id: str
    value: float


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("json-wire")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens={_TOKEN: "t"}) as process:
        yield process


def _op(n: int, data: dict[str, Any]) -> RemoteOp:
    return RemoteOp(
        op_id=f"0190c000-0000-7000-8000-{n:012d}",
        collection="readings",
        item_id=f"r{n}",
        kind="upsert",
        data=data,
        base_version=0,
        hlc=f"{1_700_000_000_000 + n:013d}-0000-a",
        schema_version=1,
    )


def test_the_encoder_names_each_op_json_cannot_carry() -> None:
    ops = [
        _op(1, {"v": 1.5}),
        _op(2, {"v": math.inf}),
        _op(3, {"nested": {"list": [0.0, -math.inf]}}),
        _op(4, {"v": math.nan, "when": {1, 2}}),  # not JSON-native either way
    ]
    with pytest.raises(UnsendableOpsError) as caught:
        encode_ops(ops, "json")
    assert sorted(caught.value.refused) == [1, 2, 3]
    assert "inf at data.v" in caught.value.refused[1]
    assert "-inf at data.nested.list[1]" in caught.value.refused[2]
    assert "nan at data.v" in caught.value.refused[3]
    assert encode_ops(ops, "msgpack")  # msgpack writes them as they are


async def test_a_batch_sends_what_json_carries_and_refuses_the_rest(server: ServerProcess) -> None:
    ops = [_op(10, {"v": 1.0}), _op(11, {"v": math.inf}), _op(12, {"v": 2.0})]
    async with HttpBackend(server.base_url, token=_TOKEN, wire_format="json") as remote:
        result = await remote.push(ops)
        assert [r.status.value for r in result.results] == ["accepted", "rejected", "accepted"]
        assert [r.op_id for r in result.results] == [op.op_id for op in ops]
        assert "JSON cannot carry" in (result.results[1].reason or "")
        page = await remote.pull(0, 100, collections=["readings"])
    assert sorted(c.item_id for c in page.changes) == ["r10", "r12"]
    only_refused = [_op(13, {"v": -math.inf})]
    async with HttpBackend(server.base_url, token=_TOKEN, wire_format="json") as remote:
        result = await remote.push(only_refused)  # no request at all
        assert [r.status.value for r in result.results] == ["rejected"]


def test_a_store_dead_letters_the_op_and_syncs_the_others(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Nothing reaches the server as null: the op is dead-lettered with its reason."""
    backend = HttpBackend(server.base_url, token=_TOKEN, wire_format="json")
    with NexusStore[Reading, str](
        tmp_path / "a.db", model=Reading, collection="json_store", backend=backend
    ) as store:
        store.save_many(
            [
                Reading(id="ok1", value=1.0),
                Reading(id="bad", value=math.inf),
                Reading(id="ok2", value=2.0),
            ]
        )
        summary = store.sync()
        assert (summary.pushed, summary.dead_lettered) == (2, 1)
        dead = store.queue.dead()
        assert [op.item_id for op in dead] == ["bad"]
        assert "JSON cannot carry" in (dead[0].last_error or "")
    reader = HttpBackend(server.base_url, token=_TOKEN)
    with NexusStore[Reading, str](
        tmp_path / "b.db", model=Reading, collection="json_store", backend=reader
    ) as other:
        assert other.sync().pulled == 2
        assert sorted(r.id for r in other.all()) == ["ok1", "ok2"]
