"""FaultyBackend: scripted and seeded faults around a real backend."""

from __future__ import annotations

import anyio
import pytest

from nexus_store import (
    AuthError,
    LifecycleError,
    NetworkError,
    PermanentError,
    RateLimitedError,
    RemoteError,
    ServerUnavailableError,
)
from nexus_store.backends import MemoryBackend, OpStatus
from nexus_store.testing import Fault, FaultKind, FaultyBackend, OpWriter

pytestmark = pytest.mark.anyio


async def test_dropped_response_was_applied_and_replay_is_answered() -> None:
    """A dropped answer raises NetworkError after the server applied the batch; the
    resent batch gets the original answers and applies nothing twice."""
    server = MemoryBackend()
    faulty = FaultyBackend(server, push_faults=[Fault.drop_response()])
    w = OpWriter("n")
    ops = [w.upsert(1, {"v": 1}), w.upsert(2, {"v": 2})]
    with pytest.raises(NetworkError):
        await faulty.push(ops)
    assert await server.core.head("default") == 2
    again = await faulty.push(ops)
    assert again == faulty.dropped[0]
    assert [r.status for r in again.results] == [OpStatus.ACCEPTED] * 2
    assert await server.core.head("default") == 2
    assert [(i.verb, i.call, i.fault.kind) for i in faulty.injected] == [
        ("push", 1, FaultKind.DROP_RESPONSE)
    ]


@pytest.mark.parametrize(
    ("fault", "error", "retry_after"),
    [
        (Fault.network(), NetworkError, None),
        (Fault.unavailable(retry_after=3), ServerUnavailableError, 3),
        (Fault.rate_limited(retry_after=2), RateLimitedError, 2),
        (Fault.permanent("nope"), PermanentError, None),
        (Fault.auth(), AuthError, None),
    ],
)
async def test_failures_before_sending_apply_nothing(
    fault: Fault, error: type[RemoteError], retry_after: float | None
) -> None:
    """Every other failure raises its typed error and leaves the server untouched."""
    server = MemoryBackend()
    faulty = FaultyBackend(server)
    faulty.fail_next_push(fault)
    with pytest.raises(error) as caught:
        await faulty.push([OpWriter("n").upsert(1, {})])
    assert caught.value.retry_after == retry_after
    assert await server.core.head("default") == 0
    assert (await faulty.push([OpWriter("n").upsert(1, {})])).results[0].version == 1


async def test_script_runs_in_order_with_gaps() -> None:
    """Scripted faults apply to consecutive calls; None means a clean call."""
    faulty = FaultyBackend(MemoryBackend(), push_faults=[None, Fault.network(), None])
    w = OpWriter("n")
    outcomes = []
    for n in range(4):
        try:
            await faulty.push([w.upsert(n, {})])
            outcomes.append("ok")
        except NetworkError:
            outcomes.append("fail")
    assert outcomes == ["ok", "fail", "ok", "ok"]
    assert faulty.calls["push"] == 4


async def test_pull_faults() -> None:
    """Pulls fail on cue too; a dropped pull answer is just lost."""
    faulty = FaultyBackend(MemoryBackend(), pull_faults=[Fault.network(), Fault.drop_response()])
    faulty.fail_next_pull(Fault.unavailable())
    for error in (NetworkError, NetworkError, ServerUnavailableError):
        with pytest.raises(error):
            await faulty.pull()
    assert (await faulty.pull()).changes == []
    assert faulty.calls["pull"] == 4


async def test_seeded_faults_replay_exactly() -> None:
    """The same seed and rates give the same faults; the rates are roughly honoured."""

    async def run(seed: int) -> list[str]:
        faulty = FaultyBackend(
            MemoryBackend(), drop_response=0.2, network_error=0.1, unavailable=0.1, seed=seed
        )
        w = OpWriter("n")
        kinds = []
        for n in range(200):
            try:
                await faulty.push([w.upsert(n, {})])
                kinds.append("ok")
            except RemoteError as exc:
                kinds.append(type(exc).__name__)
        return kinds

    first, second, other = await run(7), await run(7), await run(8)
    assert first == second
    assert first != other
    assert 40 <= first.count("ok") <= 160
    assert first.count("NetworkError") > first.count("ServerUnavailableError") > 0


async def test_delay_slows_a_call_without_applying_it_early() -> None:
    """A delayed call can be cancelled before it reaches the server."""
    server = MemoryBackend()
    faulty = FaultyBackend(server, push_faults=[Fault.delay(60)])
    with anyio.move_on_after(0.05) as scope:
        await faulty.push([OpWriter("n").upsert(1, {})])
    assert scope.cancelled_caught
    assert await server.core.head("default") == 0
    latency = FaultyBackend(server, delay=0.01)
    with anyio.fail_after(5):
        assert (await latency.push([OpWriter("n").upsert(1, {})])).results[0].version == 1


def test_rates_are_checked() -> None:
    """Negative rates or push rates summing over 1 are refused."""
    for kwargs in ({"drop_response": 0.6, "permanent": 0.6}, {"pull_error": 2}, {"delay": -1}):
        with pytest.raises(ValueError, match="probabilit"):
            FaultyBackend(MemoryBackend(), **kwargs)


async def test_closing_closes_the_inner_backend() -> None:
    """aclose closes what it wraps."""
    inner = MemoryBackend()
    async with FaultyBackend(inner) as faulty:
        assert "MemoryBackend" in repr(faulty)
    with pytest.raises(LifecycleError):
        await inner.pull()
