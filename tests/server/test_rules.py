"""The server core's rules as pure functions: prepare, decide, plan_batch."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_store._codec import decode
from nexus_store.backends import Change, OpResult, OpStatus, PushResult, RemoteOp
from nexus_store.server._prepare import canonical, item_id_of, item_key_of, prepare
from nexus_store.server._rules import ConflictPolicy, answer_of, decide, plan_batch, record_of
from nexus_store.server.storage._base import BatchPlan, BatchState, OpRecord, StoredItem


def op(
    op_id: str = "op1",
    item: str | int = "a",
    *,
    kind: str = "upsert",
    data: dict[str, Any] | None = None,
    base: int = 0,
    hlc: str = "0000000001000-00000-x",
    collection: str = "notes",
) -> RemoteOp:
    if kind == "upsert" and data is None:
        data = {"v": op_id}
    return RemoteOp(
        op_id=op_id,
        collection=collection,
        item_id=item,
        kind=kind,
        data=data,
        base_version=base,
        hlc=hlc,
    )


def stored(
    version: int, *, data: dict[str, Any] | None = None, hlc: str = "0000000002000-00000-s"
) -> StoredItem:
    prepared = prepare(op("seed", data=data or {"server": True}, hlc=hlc))
    return StoredItem(
        collection="notes",
        item_key=item_key_of("a"),
        version=version,
        deleted=False,
        data=prepared.blob,
        hlc=hlc,
        schema_version=1,
    )


def tombstone(version: int, hlc: str = "0000000002000-00000-s") -> StoredItem:
    return StoredItem("notes", item_key_of("a"), version, True, None, hlc, 1)


def answers(plan: BatchPlan) -> list[OpResult]:
    """A plan's answers as the OpResults the core sends."""
    return PushResult.model_validate({"results": plan.results}).results


def run_decide(o: RemoteOp, current: StoredItem | None, policy: ConflictPolicy = "lww") -> Any:
    known = current.version if current else 0
    return decide(prepare(o), current, known_version=known, policy=policy, next_version=11)


# -- prepare ---------------------------------------------------------------------------------


def test_item_keys_keep_the_id_type() -> None:
    """String and integer ids map to distinct keys and back to the same value and type."""
    assert item_key_of(1) != item_key_of("1")
    for value in (1, "1", "é", 'quote"', -(2**63)):
        assert item_id_of(item_key_of(value)) == value
        assert type(item_id_of(item_key_of(value))) is type(value)
    with pytest.raises(TypeError):
        item_id_of("true")


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    """Equal payloads share a fingerprint whatever their map order; any change alters it."""
    a = prepare(op(data={"x": 1, "y": {"b": 2, "a": [1, {"d": 4, "c": 3}]}}))
    b = prepare(op(data={"y": {"a": [1, {"c": 3, "d": 4}], "b": 2}, "x": 1}))
    assert a.fingerprint == b.fingerprint
    assert a.blob == b.blob
    assert decode(a.blob or b"") == {"x": 1, "y": {"a": [1, {"c": 3, "d": 4}], "b": 2}}
    for other in (
        op(data={"x": 2, "y": {}}),
        op(data={"x": 1, "y": {"b": 2, "a": [1, {"d": 4, "c": 3}]}}, base=1),
        op(data={"x": 1, "y": {"b": 2, "a": [1, {"d": 4, "c": 3}]}}, hlc="0000000001000-00000-y"),
        op(data={"x": 1, "y": {"b": 2, "a": [1, {"d": 4, "c": 3}]}}, item=1),
        op(data={"x": 1, "y": {"b": 2, "a": [1, {"d": 4, "c": 3}]}}, collection="other"),
    ):
        assert prepare(other).fingerprint != a.fingerprint


def test_canonical_sorts_nested_maps_and_tolerates_mixed_keys() -> None:
    """Maps come out key-sorted at every depth; unsortable keys keep their order."""
    assert list(canonical({"b": 1, "a": {"d": 1, "c": 2}})) == ["a", "b"]
    assert canonical((1, [2])) == [1, [2]]
    mixed = {1: "x", "a": "y"}
    assert canonical(mixed) == mixed


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (RemoteOp(op_id="o", collection="c", item_id="a", kind="upsert", hlc="h"), "must carry"),
        (op(op_id="a\x00b"), "NUL"),
        (op(hlc="0000000001000-00000-\x00"), "NUL"),
        (op(data={"when": object()}), "cannot be encoded"),
    ],
)
def test_invalid_ops_are_refused_before_any_storage(bad: RemoteOp, reason: str) -> None:
    """Upserts without data, NUL characters and unencodable data are refused with a reason."""
    prepared = prepare(bad)
    assert prepared.invalid is not None
    assert reason in prepared.invalid
    plan = plan_batch([prepared], BatchState(0, {}, {}), policy="lww")
    assert answers(plan)[0].status is OpStatus.REJECTED
    assert (plan.writes, plan.records, plan.head) == ([], [], 0)


def test_delete_carries_no_data() -> None:
    """A delete stores no data even when the op carries some."""
    assert prepare(op(kind="delete", data={"x": 1})).blob is None


# -- decide ----------------------------------------------------------------------------------


def test_new_item_is_accepted_with_the_next_version() -> None:
    """An op on an item the tenant never had is accepted as the next change."""
    outcome = run_decide(op(base=7), None)
    assert outcome.status is OpStatus.ACCEPTED
    assert outcome.version == 11
    assert outcome.write is not None
    assert (outcome.write.version, outcome.write.deleted) == (11, False)


def test_delete_of_unknown_item_writes_a_tombstone() -> None:
    """Deleting an item the server never had records a tombstone (a change to pull)."""
    outcome = run_decide(op(kind="delete"), None)
    assert outcome.write is not None
    assert outcome.write.deleted
    assert outcome.write.data is None


@pytest.mark.parametrize("policy", ["lww", "server_wins"])
def test_write_based_on_current_version_is_fresh(policy: ConflictPolicy) -> None:
    """A write based on the current (or a later) version is accepted under every policy."""
    for base in (5, 6):
        outcome = run_decide(op(base=base, hlc="0000000000001-00000-old"), stored(5), policy)
        assert outcome.status is OpStatus.ACCEPTED
        assert outcome.item is None


def test_lww_newer_stale_write_wins() -> None:
    """Under LWW a stale write with a newer stamp is accepted and stores its own stamp."""
    outcome = run_decide(op(base=3, hlc="0000000003000-00000-x"), stored(5))
    assert outcome.status is OpStatus.ACCEPTED
    assert outcome.write.hlc == "0000000003000-00000-x"


@pytest.mark.parametrize("hlc", ["0000000001000-00000-x", "0000000002000-00000-s"])
def test_lww_older_or_equal_stale_write_conflicts(hlc: str) -> None:
    """Under LWW a stale write with an older (or the same) stamp gets the server's copy."""
    outcome = run_decide(op(base=3, hlc=hlc), stored(5))
    assert outcome.status is OpStatus.CONFLICT
    assert outcome.write is None
    assert outcome.item == Change(
        collection="notes",
        item_id="a",
        version=5,
        data={"server": True},
        hlc="0000000002000-00000-s",
    )


def test_server_wins_refuses_every_stale_write() -> None:
    """Under server_wins even a newer stale write is a conflict."""
    outcome = run_decide(op(base=3, hlc="0000000009000-00000-x"), stored(5), "server_wins")
    assert outcome.status is OpStatus.CONFLICT
    assert outcome.item is not None


def test_resolver_merge_is_stored_and_returned() -> None:
    """A resolver's merge is accepted, stored with the later stamp and sent back."""
    seen: list[tuple[RemoteOp, Change]] = []

    def merge(incoming: RemoteOp, server: Change) -> dict[str, Any]:
        seen.append((incoming, server))
        return {**(server.data or {}), **(incoming.data or {})}

    o = op(base=3, data={"mine": 1}, hlc="0000000001000-00000-x")
    outcome = run_decide(o, stored(5), merge)
    assert outcome.status is OpStatus.ACCEPTED
    assert outcome.item is not None
    assert outcome.item.data == {"mine": 1, "server": True}
    assert (outcome.item.version, outcome.item.hlc) == (11, "0000000002000-00000-s")
    assert seen[0][0] is o
    assert seen[0][1].version == 5


def test_resolver_none_keeps_server_copy() -> None:
    """A resolver returning None keeps the server's copy: a conflict."""
    outcome = run_decide(op(base=3), stored(5), lambda _op, _server: None)
    assert outcome.status is OpStatus.CONFLICT


def test_failing_resolver_asks_for_retry() -> None:
    """A resolver that raises (or returns unencodable data) gives RETRY, not a failed batch."""

    def broken(_op: RemoteOp, _server: Change) -> dict[str, Any]:
        raise RuntimeError("boom")

    for resolver in (broken, lambda _o, _s: {"x": object()}):
        outcome = run_decide(op(base=3), stored(5), resolver)
        assert outcome.status is OpStatus.RETRY
        assert "resolver" in (outcome.reason or "")


def test_resolver_is_not_asked_about_deletions() -> None:
    """Stale deletes and upserts over tombstones fall back to last-writer-wins."""

    def never(_op: RemoteOp, _server: Change) -> dict[str, Any]:
        raise AssertionError("not a merge")

    newer = "0000000009000-00000-x"
    assert run_decide(op(kind="delete", base=3, hlc=newer), stored(5), never).status is (
        OpStatus.ACCEPTED
    )
    assert run_decide(op(base=3, hlc=newer), tombstone(5), never).status is OpStatus.ACCEPTED
    assert run_decide(op(base=3), tombstone(5), never).status is OpStatus.CONFLICT


def test_deleting_a_deleted_item_changes_nothing() -> None:
    """A delete of a tombstone is accepted at the tombstone's version, with no new change."""
    for policy in ("lww", "server_wins"):
        outcome = run_decide(op(kind="delete", base=0), tombstone(5), policy)
        assert (outcome.status, outcome.version, outcome.write) == (OpStatus.ACCEPTED, 5, None)


# -- plan_batch ------------------------------------------------------------------------------


def test_batch_applies_in_order_with_consecutive_versions() -> None:
    """Accepted changes take head+1, head+2...; an item's final state is its last write."""
    ops = [prepare(op(f"o{i}", "a" if i % 2 else "b", data={"i": i})) for i in range(5)]
    plan = plan_batch(ops, BatchState(10, {}, {}), policy="server_wins")
    assert [r.version for r in answers(plan)] == [11, 12, 13, 14, 15]
    assert plan.head == 15
    assert sorted((w.item_key, w.version) for w in plan.writes) == [('"a"', 14), ('"b"', 15)]
    assert len(plan.records) == 5


def test_ops_of_one_batch_form_a_chain() -> None:
    """A second write based on the pre-batch version is not stale against the first."""
    current = stored(5)
    ops = [prepare(op("o1", base=5)), prepare(op("o2", base=5)), prepare(op("o3", base=2))]
    plan = plan_batch(ops, BatchState(5, {current.key: current}, {}), policy="server_wins")
    assert [r.status for r in answers(plan)] == [
        OpStatus.ACCEPTED,
        OpStatus.ACCEPTED,
        OpStatus.CONFLICT,
    ]
    conflict = answers(plan)[2].item
    assert conflict is not None
    assert conflict.version == 7


def test_recorded_op_is_answered_from_its_record() -> None:
    """A replayed op gets its recorded answer; another payload under its id is refused."""
    first = prepare(op("o1", data={"v": 1}))
    plan = plan_batch([first], BatchState(0, {}, {}), policy="lww")
    records = {r.op_id: r for r in plan.records}
    replay = plan_batch([first], BatchState(1, {}, records), policy="lww")
    assert answers(replay) == answers(plan)
    assert (replay.writes, replay.records, replay.head) == ([], [], 1)
    forged = plan_batch(
        [prepare(op("o1", data={"v": 2}))], BatchState(1, {}, records), policy="lww"
    )
    assert answers(forged)[0].status is OpStatus.REJECTED
    assert answers(forged)[0].reason == "op id already used with a different payload"
    assert forged.writes == []


def test_op_repeated_within_a_batch_applies_once() -> None:
    """The same op twice in one batch applies once; a different payload under it is refused."""
    o = prepare(op("o1"))
    other = prepare(op("o1", data={"other": 1}))
    plan = plan_batch([o, o, other], BatchState(0, {}, {}), policy="lww")
    assert [r.status for r in answers(plan)] == [
        OpStatus.ACCEPTED,
        OpStatus.ACCEPTED,
        OpStatus.REJECTED,
    ]
    assert answers(plan)[0].version == answers(plan)[1].version == 1
    assert (plan.head, len(plan.records)) == (1, 1)


def test_retry_answers_are_not_recorded() -> None:
    """An op answered RETRY leaves no record, so it is decided again next time."""

    def broken(_op: RemoteOp, _server: Change) -> dict[str, Any]:
        raise RuntimeError("later")

    current = stored(5)
    plan = plan_batch(
        [prepare(op(base=1))], BatchState(5, {current.key: current}, {}), policy=broken
    )
    assert answers(plan)[0].status is OpStatus.RETRY
    assert (plan.records, plan.writes, plan.head) == ([], [], 5)


@pytest.mark.parametrize(
    "result",
    [
        OpResult(op_id="x", status=OpStatus.ACCEPTED, version=3),
        OpResult(op_id="x", status=OpStatus.REJECTED, reason="no"),
        OpResult(
            op_id="x",
            status=OpStatus.CONFLICT,
            item=Change(collection="c", item_id=2, version=4, data={"a": [1]}, hlc="h"),
        ),
        OpResult(
            op_id="x",
            status=OpStatus.ACCEPTED,
            version=5,
            item=Change(collection="c", item_id="i", version=5, deleted=True),
        ),
    ],
)
def test_results_round_trip_through_records(result: OpResult) -> None:
    """What is recorded for an op id decodes to the same answer."""
    answer = result.model_dump(exclude_none=True)
    assert OpResult.model_validate(answer_of(record_of("x", b"f", answer))) == result


# -- properties ------------------------------------------------------------------------------

ids = st.sampled_from(["a", "b", 1, 2])
op_ids = st.sampled_from([f"o{i}" for i in range(8)])
ops_strategy = st.lists(
    st.builds(
        lambda op_id, item, kind, n, base, millis: op(
            op_id,
            item,
            kind=kind,
            data={"n": n} if kind == "upsert" else None,
            base=base,
            hlc=f"{millis:013d}-00000-x",
        ),
        op_ids,
        ids,
        st.sampled_from(["upsert", "delete"]),
        st.integers(0, 3),
        st.integers(0, 6),
        st.integers(0, 50),
    ),
    max_size=12,
)


def apply_plan(state: BatchState, ops: list[RemoteOp], policy: ConflictPolicy) -> Any:
    plan = plan_batch([prepare(o) for o in ops], state, policy=policy)
    items = dict(state.items)
    items.update({w.key: w for w in plan.writes})
    records: dict[str, OpRecord] = dict(state.records)
    records.update({r.op_id: r for r in plan.records})
    return plan, BatchState(plan.head, items, records)


@settings(max_examples=200, deadline=None)
@given(ops_strategy, ops_strategy, st.sampled_from(["lww", "server_wins"]))
def test_plans_keep_the_sequence_and_replays_are_inert(
    first: list[RemoteOp], second: list[RemoteOp], policy: ConflictPolicy
) -> None:
    """Versions are gap-free from the head; replaying any earlier batch changes nothing."""
    state = BatchState(0, {}, {})
    for batch in (first, second):
        plan, after = apply_plan(state, batch, policy)
        new_versions = sorted(
            {r.version for r in answers(plan) if r.version is not None and r.version > state.head}
        )
        assert new_versions == list(range(state.head + 1, plan.head + 1))
        assert len({w.key for w in plan.writes}) == len(plan.writes)
        assert all(state.head < w.version <= plan.head for w in plan.writes)
        state = after
    for batch in (first, second):
        replay, again = apply_plan(state, batch, policy)
        assert replay.writes == []
        assert replay.records == []
        assert again.head == state.head
        assert all(r.status is not OpStatus.ACCEPTED or r.version for r in answers(replay))
