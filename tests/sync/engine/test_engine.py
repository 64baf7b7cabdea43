"""The sync engine's decisions, with plain inputs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store import (
    AuthError,
    ErrorKind,
    PayloadTooLargeError,
    PermanentError,
    RateLimitedError,
    SyncPriority,
)
from nexus_store.backends import Change, OpResult, OpStatus, PushResult
from nexus_store.sync.device._device import DeviceState
from nexus_store.sync.engine._engine import (
    BatchErrorAction,
    EngineConfig,
    allowed_priorities,
    budget_left,
    fit_batch,
    hold_back,
    is_offline,
    plan_batch_error,
    plan_results,
    split_batch,
)
from nexus_store.sync.engine._progress import SyncStopReason

ALL = frozenset(SyncPriority)
NOT_LOW = ALL - {SyncPriority.LOW}


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (None, ALL),
        (DeviceState(), ALL),
        (DeviceState(metered=True), NOT_LOW),
        (DeviceState(metered=True, temporarily_unmetered=True), ALL),
        (DeviceState(battery_low=True), NOT_LOW),
        (DeviceState(low_power_mode=True), NOT_LOW),
        (DeviceState(roaming=True), ALL),
    ],
)
def test_low_priority_waits_on_metered_network_or_low_battery(
    device: DeviceState | None, expected: frozenset[SyncPriority]
) -> None:
    """LOW is held back on a metered network, low battery or low-power mode; never others."""
    assert allowed_priorities(device) == expected


def test_offline_only_when_device_says_disconnected() -> None:
    """No device means "assume online"; a disconnected device means offline."""
    assert not is_offline(None)
    assert not is_offline(DeviceState())
    assert is_offline(DeviceState(connected=False))


def test_fit_batch_respects_byte_budget_but_sends_at_least_one() -> None:
    """Leading ops fit the byte budget; an oversized first op still goes alone."""
    assert fit_batch([10, 10, 10], 25) == 2
    assert fit_batch([10, 10, 10], 30) == 3
    assert fit_batch([100, 1], 10) == 1
    assert fit_batch([], 10) == 0
    assert fit_batch([5] * 7, None) == 7


@given(st.lists(st.integers(0, 1000), max_size=50), st.integers(1, 5000))
def test_fit_batch_is_the_longest_fitting_prefix(sizes: list[int], budget: int) -> None:
    """fit_batch returns the longest prefix within budget (at least one op)."""
    n = fit_batch(sizes, budget)
    if not sizes:
        assert n == 0
        return
    assert n >= 1
    assert n == 1 or sum(sizes[:n]) <= budget
    assert n == len(sizes) or sum(sizes[: n + 1]) > budget


@given(st.lists(st.integers(), min_size=2, max_size=100))
def test_split_keeps_order_and_makes_progress(ops: list[int]) -> None:
    """Both halves are non-empty and concatenate back to the batch."""
    first, second = split_batch(ops)
    assert first
    assert second
    assert first + second == ops


@dataclass(frozen=True)
class _Op:
    collection: str
    item_id: str | int
    n: int


def test_hold_back_keeps_later_ops_of_a_failed_item() -> None:
    """Ops of an item whose earlier op failed are released; others are sent."""
    ops = [_Op("notes", "a", 1), _Op("notes", 1, 2), _Op("tasks", "a", 3), _Op("notes", "a", 4)]
    send, release = hold_back(ops, {("notes", "a"), ("notes", "1")})
    assert [o.n for o in send] == [3]
    assert [o.n for o in release] == [1, 2, 4]
    assert hold_back(ops, set()) == (ops, [])


def _result(*results: OpResult) -> PushResult:
    return PushResult(results=list(results))


def test_plan_results_maps_each_status() -> None:
    """accepted→ack with version; conflict→adopt+ack; rejected→dead; retry→nack."""
    server_copy = Change(collection="notes", item_id="b", version=7, data={"id": "b"})
    plan = plan_results(
        ["a", "b", "c", "d"],
        _result(
            OpResult(op_id="a", status=OpStatus.ACCEPTED, version=5),
            OpResult(op_id="b", status=OpStatus.CONFLICT, item=server_copy),
            OpResult(op_id="c", status=OpStatus.REJECTED, reason="id too long"),
            OpResult(op_id="d", status=OpStatus.RETRY, retry_after=3),
        ),
    )
    assert [(a.op_id, a.version, a.conflict) for a in plan.acks] == [
        ("a", 5, False),
        ("b", 7, True),
    ]
    assert plan.acks[1].adopt == server_copy
    assert plan.conflicts == 1
    assert [(f.op_id, f.kind, f.reason, f.retry_after) for f in plan.failures] == [
        ("c", ErrorKind.PERMANENT, "id too long", None),
        ("d", ErrorKind.RETRYABLE, "the remote asked to retry later", 3),
    ]


def test_plan_results_never_acks_an_op_without_answer() -> None:
    """A missing answer is a retryable failure; answers for unsent ops are ignored."""
    plan = plan_results(
        ["a", "b"],
        _result(
            OpResult(op_id="a", status=OpStatus.ACCEPTED, version=1),
            OpResult(op_id="zz", status=OpStatus.ACCEPTED, version=2),
            OpResult(op_id="a", status=OpStatus.REJECTED),
        ),
    )
    assert [a.op_id for a in plan.acks] == ["a"]
    assert [(f.op_id, f.kind) for f in plan.failures] == [("b", ErrorKind.RETRYABLE)]


def test_accepted_with_a_merged_copy_is_adopted() -> None:
    """An accept carrying the server's (merged) copy asks the store to adopt it."""
    merged = Change(collection="notes", item_id="a", version=3, data={"id": "a", "x": 1})
    plan = plan_results(
        ["a"], _result(OpResult(op_id="a", status=OpStatus.ACCEPTED, version=3, item=merged))
    )
    assert plan.acks[0].adopt == merged
    assert not plan.acks[0].conflict


@given(
    st.lists(
        st.tuples(st.sampled_from(list(OpStatus)), st.booleans()),
        max_size=30,
    )
)
def test_every_sent_op_gets_exactly_one_decision(answers: list[tuple[OpStatus, bool]]) -> None:
    """Each sent op is acked or failed exactly once, whatever the answers."""
    sent = [f"op{i}" for i in range(len(answers))]
    results = [
        OpResult(op_id=op_id, status=status, version=1 if status is OpStatus.ACCEPTED else None)
        for op_id, (status, present) in zip(sent, answers, strict=True)
        if present
    ]
    plan = plan_results(sent, _result(*results))
    decided = [a.op_id for a in plan.acks] + [f.op_id for f in plan.failures]
    assert sorted(decided) == sorted(sent)


def test_payload_too_large_splits_then_dead_letters_a_single_op() -> None:
    """A 413 on a batch splits it; on one op it dead-letters that op with the reason."""
    error = PayloadTooLargeError("body of 9 MiB over 1 MiB")
    many = plan_batch_error(error, batch_len=8, consecutive_failures=0, max_consecutive_failures=3)
    assert many.action is BatchErrorAction.SPLIT
    assert many.stop is None
    assert not many.counts_as_failure
    one = plan_batch_error(error, batch_len=1, consecutive_failures=0, max_consecutive_failures=3)
    assert one.action is BatchErrorAction.DEAD_LETTER
    assert one.kind is ErrorKind.PERMANENT
    assert "9 MiB" in one.reason
    other = plan_batch_error(
        PermanentError("bad batch"), batch_len=2, consecutive_failures=0, max_consecutive_failures=3
    )
    assert other.action is BatchErrorAction.SPLIT


def test_rate_limit_and_auth_stop_the_run() -> None:
    """429 and auth give the ops back untouched, pause the remote and stop the run."""
    limited = plan_batch_error(
        RateLimitedError("429", retry_after=30),
        batch_len=5,
        consecutive_failures=0,
        max_consecutive_failures=3,
    )
    assert (limited.action, limited.retry_after, limited.stop, limited.pause) == (
        BatchErrorAction.RELEASE,
        30,
        SyncStopReason.RATE_LIMITED,
        True,
    )
    assert not limited.counts_as_failure
    auth = plan_batch_error(
        AuthError("401"), batch_len=5, consecutive_failures=0, max_consecutive_failures=3
    )
    assert (auth.action, auth.kind, auth.stop, auth.pause) == (
        BatchErrorAction.RELEASE,
        ErrorKind.AUTH,
        SyncStopReason.AUTH,
        True,
    )
    assert not auth.counts_as_failure


def test_budget_left() -> None:
    """Unlimited budget is None; otherwise the remainder, never negative."""
    assert budget_left(100.0, 150.0, None) is None
    assert budget_left(100.0, 130.0, 60.0) == 30.0
    assert budget_left(100.0, 190.0, 60.0) == 0.0


def test_engine_config_rejects_nonsense() -> None:
    """Zero or negative sizes are refused up front."""
    with pytest.raises(ValueError, match="batch_size"):
        EngineConfig(batch_size=0)
    with pytest.raises(ValueError, match="max_batch_bytes"):
        EngineConfig(max_batch_bytes=0)
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        EngineConfig(max_consecutive_failures=0)
    with pytest.raises(ValueError, match="pull_page"):
        EngineConfig(pull_page=0)
