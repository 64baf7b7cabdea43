"""What a whole-batch failure means for the ops (``plan_batch_error``), with plain inputs.

A remote that is down is not the ops' fault: an outage, however long, counts no attempt
of any op. A failure that may be the ops' (500, a malformed answer) is bisected down to
the op that fails alone, and only that op is charged an attempt. Checked over every
combination of inputs, and by replaying the engine's bisection against a simulated
server for every position of a poison op.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from nexus_store import (
    AuthError,
    ErrorKind,
    NetworkError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitedError,
    RemoteError,
    ServerUnavailableError,
)
from nexus_store.sync.engine._engine import (
    BatchErrorAction,
    BatchErrorPlan,
    FailureScope,
    failure_scope,
    plan_batch_error,
    split_batch,
    split_depth,
)
from nexus_store.sync.engine._progress import SyncStopReason

LIMIT = 3

OUTAGES: list[RemoteError] = [
    NetworkError("connection refused"),
    NetworkError("timed out"),
    ServerUnavailableError("bad gateway", status=502),
    ServerUnavailableError("unavailable", status=503),
    ServerUnavailableError("gateway timeout", status=504),
    RateLimitedError("slow down"),
]
"""The remote is unreachable or says it is down: never the ops' doing."""
MAYBE_OPS: list[RemoteError] = [
    ServerUnavailableError("internal error", status=500),
    ServerUnavailableError("not implemented", status=501),
    ServerUnavailableError("storage failed"),
    ProtocolError("truncated answer"),
]
"""The server failed while handling the batch: what was sent may be why."""
ASKED: list[RemoteError] = [
    RateLimitedError("429", retry_after=7),
    ServerUnavailableError("503", retry_after=9, status=503),
    ServerUnavailableError("500", retry_after=2, status=500),
]
"""The remote said when to come back."""

GRID = list(
    itertools.product(
        (1, 2, 7, 500),  # batch_len
        (0, 1, 2, 11, 40),  # consecutive failures before
        (False, True),  # answered in this run
        (False, True),  # probed just now
        (0, 9),  # depth
    )
)


def _plan(error: RemoteError, case: tuple[int, int, bool, bool, int]) -> BatchErrorPlan:
    batch_len, failures, answered, probed, depth = case
    return plan_batch_error(
        error,
        batch_len=batch_len,
        consecutive_failures=failures,
        max_consecutive_failures=LIMIT,
        answered=answered,
        probed=probed,
        depth=depth,
    )


def test_the_scope_of_each_failure() -> None:
    """Connection failures, 502/503/504 and a bare 429 are the remote's; 500s may be the ops'."""
    assert {failure_scope(e) for e in OUTAGES} == {FailureScope.REMOTE}
    assert {failure_scope(e) for e in MAYBE_OPS} == {FailureScope.MAYBE_OP}


@pytest.mark.parametrize("error", OUTAGES, ids=repr)
def test_an_outage_never_counts_an_attempt(error: RemoteError) -> None:
    """Whatever the run saw before, an outage gives the ops back untouched and pauses the remote."""
    for case in GRID:
        plan = _plan(error, case)
        assert plan.action is BatchErrorAction.RELEASE, case
        assert plan.pause, case
        assert plan.stop is SyncStopReason.FAILURES, case


@pytest.mark.parametrize("error", ASKED, ids=repr)
def test_a_remote_that_says_when_to_come_back_is_obeyed(error: RemoteError) -> None:
    """With Retry-After: release untouched, pause until then, stop; never an attempt."""
    for case in GRID:
        plan = _plan(error, case)
        assert (plan.action, plan.retry_after, plan.stop, plan.pause) == (
            BatchErrorAction.RELEASE,
            error.retry_after,
            SyncStopReason.RATE_LIMITED,
            True,
        ), case
        assert not plan.counts_as_failure


@pytest.mark.parametrize("error", MAYBE_OPS, ids=repr)
def test_a_failure_that_may_be_the_ops_is_charged_only_to_one_op(error: RemoteError) -> None:
    """A maybe-op failure: probe when nobody answered, split batches, nack a lone op only
    when the remote answers others; release and pause when it answers nobody."""
    for case in GRID:
        batch_len, failures, answered, probed, depth = case
        plan = _plan(error, case)
        last = failures + 1 >= LIMIT + depth
        if not answered and not probed:
            assert plan.action is BatchErrorAction.PROBE, case
            assert not plan.counts_as_failure
            assert not plan.pause
            assert plan.stop is None
        elif not answered:
            assert (plan.action, plan.pause, plan.stop) == (
                BatchErrorAction.RELEASE,
                True,
                SyncStopReason.FAILURES,
            ), case
        elif batch_len > 1:
            expected = BatchErrorAction.RELEASE if last else BatchErrorAction.SPLIT
            assert plan.action is expected, case
            assert plan.counts_as_failure
            assert plan.pause is last
        else:
            assert plan.action is BatchErrorAction.NACK, case
            assert plan.kind is ErrorKind.RETRYABLE
            assert (plan.stop is not None) is last is plan.pause


def test_an_attempt_is_counted_only_on_a_lone_op_of_a_remote_that_answers() -> None:
    """Across every error and every input, NACK means: one op, remote answered, maybe the op's."""
    for error in OUTAGES + MAYBE_OPS + ASKED + [AuthError("401")]:
        for case in GRID:
            plan = _plan(error, case)
            if plan.action is BatchErrorAction.NACK:
                batch_len, _, answered, _, _ = case
                assert batch_len == 1, (error, case)
                assert answered, (error, case)
                assert failure_scope(error) is FailureScope.MAYBE_OP
                assert error.retry_after is None


def test_auth_and_permanent_errors_keep_their_rules() -> None:
    """401 releases and pauses; a permanent error splits, then dead-letters the lone op."""
    for case in GRID:
        auth = _plan(AuthError("401"), case)
        assert (auth.action, auth.kind, auth.stop) == (
            BatchErrorAction.RELEASE,
            ErrorKind.AUTH,
            SyncStopReason.AUTH,
        )
        too_big = _plan(PayloadTooLargeError("413"), case)
        expected = BatchErrorAction.SPLIT if case[0] > 1 else BatchErrorAction.DEAD_LETTER
        assert too_big.action is expected
        assert not too_big.counts_as_failure


def test_split_depth_reaches_one_op() -> None:
    """split_depth(n) halvings take any batch of n ops down to one op."""
    for n in range(1, 1100):
        size, halvings = n, 0
        while size > 1:
            size = max(1, size // 2) if size % 2 == 0 else size - size // 2
            halvings += 1
        assert halvings <= split_depth(n), n


@dataclass
class Outcome:
    """What a simulated run did with each op."""

    accepted: list[int] = field(default_factory=list)
    nacked: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    requests: int = 0
    stop: SyncStopReason | None = None


def simulate(
    n: int,
    failing: set[int] | None,
    *,
    probe_answers: bool = True,
    error: RemoteError | None = None,
) -> Outcome:
    """Replay the engine's handling of one batch (``_Pushing._push_batch``) against a server
    that fails every request holding an op of ``failing`` (``None``: every request)."""
    error = error or ServerUnavailableError("internal error", status=500)
    out = Outcome()
    parts = [list(range(n))]
    answered, failures = False, 0
    while parts:
        part = parts.pop(0)
        out.requests += 1
        if failing is not None and not failing & set(part):
            out.accepted += part
            answered, failures = True, 0
            continue
        plan = plan_batch_error(
            error,
            batch_len=len(part),
            consecutive_failures=failures,
            max_consecutive_failures=LIMIT,
            answered=answered,
            depth=split_depth(n),
        )
        if plan.action is BatchErrorAction.PROBE:
            out.requests += 1
            answered = probe_answers
            plan = plan_batch_error(
                error,
                batch_len=len(part),
                consecutive_failures=failures,
                max_consecutive_failures=LIMIT,
                answered=answered,
                probed=not probe_answers,
                depth=split_depth(n),
            )
        if plan.action is BatchErrorAction.SPLIT:
            parts[:0] = list(split_batch(part))
            failures += plan.counts_as_failure
            continue
        (out.nacked if plan.action is BatchErrorAction.NACK else out.released).extend(part)
        failures += plan.counts_as_failure
        if plan.stop is not None:
            out.stop = plan.stop
            out.released += [op for rest in parts for op in rest]
            break
    return out


@pytest.mark.parametrize("n", [*range(1, 41), 100, 500])
def test_one_poison_op_is_isolated_wherever_it_is(n: int) -> None:
    """For every position of a poison op, it alone is nacked; every other op is accepted."""
    for poison in range(n):
        out = simulate(n, {poison})
        assert out.nacked == [poison], (n, poison)
        assert sorted(out.accepted) == [i for i in range(n) if i != poison]
        assert out.released == []
        assert out.requests <= 2 * split_depth(n) + 2  # each level: one failing, one good half


@pytest.mark.parametrize("n", [2, 7, 16, 33, 64])
def test_healthy_ops_are_never_charged_beside_several_poison_ops(n: int) -> None:
    """With two poison ops anywhere, no healthy op is nacked (some may go back untouched)."""
    for pair in itertools.combinations(range(n), 2):
        out = simulate(n, set(pair))
        assert set(out.nacked) <= set(pair), (n, pair)
        assert out.nacked  # at least the first one reached alone is charged
        assert sorted(out.accepted + out.nacked + out.released) == list(range(n))


@pytest.mark.parametrize("error", [*OUTAGES, ServerUnavailableError("500", status=500)], ids=repr)
def test_a_remote_that_answers_nobody_charges_nobody(error: RemoteError) -> None:
    """Every request fails, the probe too: one push (and a probe), all back untouched."""
    out = simulate(500, None, probe_answers=False, error=error)
    assert out.nacked == []
    assert sorted(out.released) == list(range(500))
    assert out.requests <= 2
    assert out.stop is SyncStopReason.FAILURES


def test_a_write_path_failing_everything_is_given_up_after_a_bounded_bisection() -> None:
    """Pushes all fail with 500 but the remote answers probes: at most limit + depth + 1
    requests, and the run stops with everything else back untouched."""
    out = simulate(500, None, probe_answers=True)
    assert out.requests <= LIMIT + split_depth(500) + 1
    assert out.stop is SyncStopReason.FAILURES
    assert len(out.nacked) <= LIMIT
    assert sorted(out.accepted + out.nacked + out.released) == list(range(500))
