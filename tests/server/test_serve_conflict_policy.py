"""``nexus-store serve --conflict-policy``: lww, server_wins and an importable resolver."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from nexus_store.backends import HttpBackend, OpStatus, PushResult, RemoteOp
from nexus_store.cli import app
from nexus_store.server._run import load_conflict_policy
from nexus_store.testing import ServerProcess

TOKEN = "policy-token"
RESOLVERS = Path(__file__).parent / "resolvers"


def _op(op_id: str, base: int, data: dict[str, object], hlc: str) -> RemoteOp:
    return RemoteOp(
        op_id=op_id,
        collection="notes",
        item_id="n1",
        kind="upsert",
        data=data,
        base_version=base,
        hlc=hlc,
    )


async def _stale_write(base_url: str) -> tuple[PushResult, PushResult, dict[str, object]]:
    """Write n1 twice from 'another device', then once more based on the first version."""
    async with HttpBackend(base_url, token=TOKEN) as remote:
        first = await remote.push([_op("op-1", 0, {"title": "one"}, "0000000001000-00000-a")])
        version = first.results[0].version
        assert version is not None
        await remote.push(
            [_op("op-2", version, {"title": "two", "pinned": True}, "0000000002000-00000-a")]
        )
        # A newer stamp, but based on the first version: a stale write.
        stale = await remote.push(
            [_op("op-3", version, {"title": "three"}, "0000000003000-00000-b")]
        )
        changes = await remote.pull(0, 10)
    [item] = [c for c in changes.changes if c.item_id == "n1"]
    return first, stale, dict(item.data or {})


@pytest.mark.parametrize(
    ("policy", "status", "data"),
    [
        (None, OpStatus.ACCEPTED, {"title": "three"}),
        ("lww", OpStatus.ACCEPTED, {"title": "three"}),
        ("server_wins", OpStatus.CONFLICT, {"title": "two", "pinned": True}),
        (
            "serve_resolvers:merge",
            OpStatus.ACCEPTED,
            {"title": "three", "pinned": True, "merged": True},
        ),
    ],
)
def test_the_policy_decides_a_stale_write(
    policy: str | None, status: OpStatus, data: dict[str, object]
) -> None:
    """A write based on an old version: kept (lww), refused (server_wins) or merged."""
    server = ServerProcess(
        "memory://",
        tokens={TOKEN: "tenant-a"},
        conflict_policy=policy,
        env={"PYTHONPATH": str(RESOLVERS)},
    )
    with server:
        _, stale, stored = anyio.run(_stale_write, server.base_url)
    assert stale.results[0].status is status
    assert stored == data


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("newest", "lww, server_wins or module:function"),
        ("no_such_module_here:merge", "cannot import"),
        ("serve_resolvers:absent", "has no function"),
        ("serve_resolvers:NOT_A_FUNCTION", "has no function"),
        ("serve_resolvers:", "lww, server_wins or module:function"),
    ],
)
def test_a_bad_policy_stops_the_server_before_it_serves(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown policy or a resolver that cannot be imported: exit 2 with the reason."""
    monkeypatch.syspath_prepend(str(RESOLVERS))
    with pytest.raises(ValueError, match=message):
        load_conflict_policy(value)
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--database",
            "memory://",
            "--port",
            "0",
            "--token",
            "t=a",
            "--conflict-policy",
            value,
        ],
        env={},
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
