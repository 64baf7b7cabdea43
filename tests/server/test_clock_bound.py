"""The server bounds clock skew: ops from the future are re-stamped; answers state its clock."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from nexus_store.backends import HttpBackend, OpStatus, RemoteOp
from nexus_store.server._clock_bound import bound_stamps
from nexus_store.server._core import ServerCore
from nexus_store.server._prepare import prepare
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.testing import FakeClock, ServerProcess

T = 1_700_000_000.0
MS = int(T * 1000)


def stamp(millis: int, node: str = "dev") -> str:
    return f"{millis:013d}-00003-{node}"


def upsert(op_id: str, hlc: str, *, base: int = 0, text: str = "x") -> RemoteOp:
    return RemoteOp(
        op_id=op_id,
        collection="notes",
        item_id="n1",
        kind="upsert",
        data={"text": text},
        base_version=base,
        hlc=hlc,
    )


def test_only_stamps_beyond_the_bound_are_re_stamped() -> None:
    """Stamps up to now + bound stay; later ones get the server's time, counter and node kept."""
    ops = [
        prepare(upsert("a", stamp(MS))),
        prepare(upsert("b", stamp(MS + 300_000))),
        prepare(upsert("c", stamp(MS + 300_001))),
        prepare(upsert("d", stamp(MS + 86_400_000, "fast"))),
        prepare(upsert("e", "zzz-not-a-stamp")),
        prepare(
            RemoteOp(op_id="f", collection="c", item_id=1, kind="upsert", hlc=stamp(10**13 - 1))
        ),
    ]
    assert bound_stamps(ops, MS, 300_000) == 3
    assert [op.hlc for op in ops[:5]] == [
        stamp(MS),
        stamp(MS + 300_000),
        stamp(MS),
        stamp(MS, "fast"),
        f"{MS:013d}mp",  # not a stamp: its first 13 characters replaced all the same
    ]
    assert ops[5].invalid is not None  # refused anyway (an upsert without data): untouched


@pytest.mark.anyio
async def test_an_op_from_the_future_competes_at_the_server_time() -> None:
    """A write stamped a day ahead is applied re-stamped: a later write of true time beats it."""
    clock = FakeClock(start=T)
    async with ServerCore(MemoryStorage(), clock=clock, max_clock_offset=300) as core:
        fast = upsert("fast", stamp(MS + 86_400_000, "fast"), text="from the future")
        first = await core.push("t", [fast])
        assert first.results[0].status is OpStatus.ACCEPTED
        assert core.restamped == 1
        [stored] = (await core.pull("t")).changes
        assert stored.hlc == stamp(MS, "fast")
        # A replay of the same op (same id, same payload as sent) is still recognised.
        assert (await core.push("t", [fast])).results == first.results
        clock.advance(5)
        later = upsert("later", stamp(MS + 5_000, "right"), text="true later")
        result = await core.push("t", [later])  # stale (base 0), newer stamp: it wins
        assert result.results[0].status is OpStatus.ACCEPTED
        [kept] = (await core.pull("t")).changes
    assert kept.data == {"text": "true later"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A real server with a one-minute bound and a tiny body limit."""
    with ServerProcess(tokens={"tok": "clock"}, max_clock_offset=60, max_body="1k") as process:
        yield process


def test_every_answer_states_the_server_clock(server: ServerProcess) -> None:
    """200s, 401s, 404s, 413s and the event stream all carry Nexus-Clock and Nexus-Clock-Bound."""
    auth = {"authorization": "Bearer tok"}
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        answers = [
            client.get("/health"),
            client.get("/openapi.json"),
            client.get("/v1/pull", headers=auth),
            client.post(
                "/v1/push", json={"ops": []}, headers={**auth, "content-type": "application/json"}
            ),
            client.get("/v1/pull"),
            client.get("/v1/pull", headers={"authorization": "Bearer wrong"}),
            client.get("/nowhere"),
            client.post("/v1/push", content=b"x" * 4096, headers=auth),
        ]
        with client.stream("GET", "/v1/events", headers=auth) as events:
            answers.append(events)
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 401, 401, 404, 413, 200]
    now = time.time() * 1000
    for answer in answers:
        assert abs(int(answer.headers["nexus-clock"]) - now) < 60_000
        assert answer.headers["nexus-clock-bound"] == "60000"


@pytest.mark.anyio
async def test_http_backend_reads_the_server_clock(server: ServerProcess) -> None:
    """HttpBackend keeps the last reading: server time, local midpoint and the bound."""
    async with HttpBackend(server.base_url, token="tok") as remote:
        assert remote.server_clock is None
        with anyio.fail_after(10):
            await remote.pull(0)
        reading = remote.server_clock
    assert reading is not None
    assert reading.max_offset == 60
    assert abs(reading.skew) < 5
    assert not reading.beyond_bound
