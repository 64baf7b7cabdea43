"""The benchmark tool's decisions, as pure functions: plans, consent, targets, diagnoses, counts."""

from __future__ import annotations

import base64
import math

import pytest

from nexus_store import (
    NetworkError,
    NexusStoreError,
    ProtocolError,
    RateLimitedError,
    ServerUnavailableError,
)
from nexus_store.bench import BenchRunError
from nexus_store.bench._diagnose import CpuCost, RunShape, limits
from nexus_store.bench._figures import Figure, Target, compare, figure_from_json, missed
from nexus_store.bench._machine import command_line
from nexus_store.bench._options import LoadOptions
from nexus_store.bench._plan import (
    CONSENT_FREE_OPS,
    BenchInputError,
    LoadConfig,
    action_cycle,
    check_config,
    needs_consent,
    parse_mix,
    plan,
)
from nexus_store.bench._recorder import error_kind, item_id, parse_item_id
from nexus_store.bench._stats import cdf, percentile, summary
from nexus_store.bench._syncresult import SyncTargets, merge_results, sync_figures
from nexus_store.bench._verify import Tally

LOCAL = ("http://127.0.0.1:8765",)
FAR = ("https://sync.example.com",)


def test_mix_is_read_and_spread_evenly() -> None:
    """--mix 8:1:1 gives 8 pushes, 1 pull, 1 poke per round, the rare ones apart."""
    assert parse_mix("8:1:1") == (8, 1, 1)
    assert parse_mix("3") == (3, 0, 0)
    cycle = action_cycle((8, 1, 1))
    assert len(cycle) == 10
    assert cycle.count("push") == 8
    assert cycle.index("pull") != cycle.index("poke") - 1 or cycle.count("pull") == 1


@pytest.mark.parametrize("text", ["", "a:b", "0:1:1", "1:2:3:4", "-1:1", "5000"])
def test_a_bad_mix_is_refused(text: str) -> None:
    """A mix that is not up to three weights with a push above 0 is refused in one line."""
    with pytest.raises(BenchInputError):
        parse_mix(text)


def test_the_plan_counts_an_open_loop() -> None:
    """An open loop offers --rate ops/s for warm-up plus duration: that many ops at most."""
    config = LoadConfig(urls=LOCAL, clients=200, batch=100, rate=20_000, duration=300, warmup=10)
    load = plan(config)
    assert load.offered_ops_s == 20_000
    assert load.total_ops == 20_000 * 310
    assert config.interval == 1.0
    assert "200 clients" in load.describe(config)


def test_a_closed_loop_has_no_count_unless_ops_bound_it() -> None:
    """A closed loop is bounded by time alone; --ops bounds each client's writes."""
    assert plan(LoadConfig(urls=LOCAL)).total_ops is None
    assert plan(LoadConfig(urls=LOCAL, clients=3, ops=1000)).total_ops == 3000


def test_consent_is_needed_only_far_away_and_beyond_the_free_amount() -> None:
    """--yes is needed for a host that is not this machine, past the default amount."""
    small = LoadConfig(urls=FAR, clients=2, ops=100)
    big = LoadConfig(urls=FAR, clients=20, ops=CONSENT_FREE_OPS)
    closed = LoadConfig(urls=FAR, clients=2)
    assert not needs_consent(plan(small), small)
    assert needs_consent(plan(big), big)
    assert needs_consent(plan(closed), closed)
    here = LoadConfig(urls=LOCAL, clients=200, duration=300)
    assert not needs_consent(plan(here), here)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"urls": ("ftp://x",)}, "needs an http"),
        ({"clients": 0}, "--clients"),
        ({"batch": 0}, "--batch"),
        ({"duration": 0}, "--duration"),
        ({"rate": -1.0}, "--rate"),
    ],
)
def test_bad_options_are_refused(change: dict[str, object], message: str) -> None:
    """Options that cannot make a run are refused before anything is sent."""
    config = LoadConfig(urls=LOCAL)
    with pytest.raises(BenchInputError, match=message):
        check_config(LoadConfig(**{**config.__dict__, **change}))  # type: ignore[arg-type]


def test_standard_preset_fills_what_was_not_said() -> None:
    """--standard is 200 clients x 100 ops/s for 5 minutes with a 2,000 ops/s target."""
    config, counts, targets = LoadOptions(standard=True).resolve(LOCAL)
    assert (counts, config.batch, config.rate, config.duration) == ([200], 100, 20_000, 300)
    assert targets.min_ops_s == 2_000
    config, counts, _ = LoadOptions(standard=True, clients="50,100").resolve(LOCAL)
    assert counts == [50, 100]
    with pytest.raises(BenchInputError):
        LoadOptions(standard=True, quick=True).resolve(LOCAL)


def test_targets_and_missed_figures() -> None:
    """A target holds or not; a missing value never meets one."""
    assert Target(">=", 2000).met(2000)
    assert not Target("<", 500).met(500)
    assert not Target("==", 0).met(None)
    assert not Target("<", 1).met(math.nan)
    figures = [
        Figure("a", "g", "a", 10, "ops/s", "higher", Target(">=", 20)),
        Figure("b", "g", "b", 10, "ms"),
    ]
    assert [f.key for f in missed(figures)] == ["a"]


def test_figures_survive_json_and_compare_by_direction() -> None:
    """Figures read back from JSON compare with a new run: better/worse by their direction."""
    old = [
        Figure("ops", "g", "ops", 1000, "ops/s", "higher", Target(">=", 2000)),
        Figure("p99", "g", "p99", 100, "ms", "lower"),
        Figure("gone", "g", "gone", 1, ""),
    ]
    back = [figure_from_json(f.to_json()) for f in old]
    assert back[0].target == Target(">=", 2000)
    new = [
        Figure("ops", "g", "ops", 1500, "ops/s", "higher"),
        Figure("p99", "g", "p99", 102, "ms", "lower"),
    ]
    changes = {c.figure.key: c for c in compare(back, new)}
    assert changes["ops"].verdict == "better"
    assert changes["p99"].verdict == "same"
    assert set(changes) == {"ops", "p99"}


def test_percentiles_by_nearest_rank() -> None:
    """p50/p99 by nearest rank; a CDF keeps both ends."""
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert summary(values)["max"] == 100
    assert math.isnan(summary([])["p99"])
    points = cdf(values, points=10)
    assert points[0] == (1, 0.01)
    assert points[-1] == (100, 1.0)


def test_errors_are_counted_by_kind() -> None:
    """429, 5xx, timeouts, broken connections and garbage are told apart."""
    assert error_kind(RateLimitedError("slow down")) == "429"
    assert error_kind(ServerUnavailableError("503")) == "5xx"
    assert error_kind(NetworkError("POST /v1/push: timed out (ReadTimeout)")) == "timeout"
    assert error_kind(NetworkError("refused")) == "connection"
    assert error_kind(ProtocolError("garbage")) == "protocol"


def test_item_ids_name_their_client_and_number() -> None:
    """An item id round-trips to (client, number); other ids are not ours."""
    assert parse_item_id(item_id(42, 123456)) == (42, 123456)
    assert parse_item_id("note-1") is None
    assert parse_item_id(7) is None


def _bits(*seqs: int) -> bytes:
    out = bytearray(4)
    for seq in seqs:
        out[seq // 8] |= 1 << (seq % 8)
    return bytes(out)


def test_the_tally_finds_lost_duplicated_and_unacknowledged_items() -> None:
    """Acked but absent is lost; seen twice is duplicated; present but not acked is counted."""
    tally = Tally({1: _bits(0, 1, 2)})
    for seq in (0, 2, 2, 5):
        tally.see(item_id(1, seq))
    tally.see("someone-else")
    result = tally.result("pull")
    assert (result.acked, result.lost, result.duplicated) == (3, 1, 1)
    assert result.applied_unacked == 1
    assert result.server_items == 3
    assert base64.b64encode(_bits(0)) == b"AQAAAA=="


def _shape(**change: object) -> RunShape:
    base = RunShape(
        offered_ops_s=None,
        applied_ops_s=1000.0,
        errors={},
        requests=100,
        client_cpu=[40.0],
        loop_lag_p99_ms=5.0,
        late_p99_s=0.0,
        interval=None,
        cpu_count=2,
    )
    return RunShape(**{**base.__dict__, **change})  # type: ignore[arg-type]


def test_the_diagnosis_names_what_limited_the_run() -> None:
    """Rate limits first, then a busy client, a busy server, or the server's answer time."""
    assert limits(_shape(errors={"429": 3}))[0].startswith("rate limits: 3")
    assert limits(_shape(client_cpu=[97.0]))[0].startswith("client CPU")
    assert limits(_shape(loop_lag_p99_ms=400.0, client_cpu=[20.0]))[0].startswith("CPU time")
    busy_server = limits(_shape(server_cpu=[99.0], server_is_local=True))
    assert any(line.startswith("server CPU") for line in busy_server)
    kept_up = limits(_shape(offered_ops_s=1000.0, interval=1.0))
    assert kept_up[0].startswith("nothing: the server kept up")
    assert limits(_shape())[0].startswith("the server's answer time")


def test_a_local_database_counts_towards_the_machines_cpus() -> None:
    """Clients, server and a database started here filling every core: the machine's CPUs."""
    alone = _shape(client_cpu=[60.0], server_cpu=[60.0], server_is_local=True)
    assert not any(line.startswith("the machine's CPUs") for line in limits(alone))
    shared = _shape(client_cpu=[60.0], server_cpu=[60.0], server_is_local=True, database_cpu=60.0)
    said = [line for line in limits(shared) if line.startswith("the machine's CPUs")]
    assert said == ["the machine's CPUs: clients, server and database together used 1.8 of 2 cores"]


def _part(acked_at: dict[str, int], push_ms: list[float]) -> dict[str, object]:
    return {
        "acked_at": acked_at,
        "errors_at": {},
        "errors": {"429": 1},
        "requests": 100,
        "push_ms": push_ms,
        "pull_ms": [],
        "poke_ms": [],
        "critical_ms": [30.0],
        "written": sum(acked_at.values()),
        "ops_status": {"accepted": sum(acked_at.values())},
        "drain_s": 0.5,
        "undrained_clients": 0,
        "pending": [[0.2, {"HIGH": 5, "NORMAL": 10}], [1.5, {"HIGH": 0, "NORMAL": 3}]],
        "lag_ms": [1.0],
        "late_s": [0.0],
        "cpu": {"percent_of_core": 30.0},
    }


def test_applied_ops_count_only_the_measured_window() -> None:
    """Acks in the warm-up are not counted; processes add up; errors are a share of requests."""
    config = LoadConfig(urls=LOCAL, clients=4, warmup=1, duration=2)
    parts = [
        _part({"0": 500, "1": 100, "2": 300}, [10.0, 20.0]),
        _part({"0": 500, "1": 100, "2": 100, "3": 999}, [30.0]),
    ]
    run = merge_results(
        config, parts, processes=2, server=None, verification=None, collection="bench_x"
    )
    assert run["applied_ops_s"] == (100 + 300 + 100 + 100) / 2
    assert run["push_ms"]["max"] == 30.0
    assert run["error_rate_pct"] == 1.0
    assert run["limits"][0].startswith("rate limits: 2")
    assert run["series"]["pending"][0] == (0, {"HIGH": 10, "NORMAL": 20})
    assert run["series"]["throughput"][-1] == (3, 999)
    figures = {f.key: f for f in sync_figures(run, SyncTargets(), key="k", group="g")}
    assert figures["k.error_rate_pct"].met is False
    assert figures["k.push_p99_ms"].met is True


def test_the_kept_command_line_hides_the_token() -> None:
    """--token's value never reaches the --json file."""
    kept = command_line(["nexus-store", "bench", "sync", "--token", "s3cret", "--token=x2"])
    assert "s3cret" not in kept
    assert "--token=x2" not in kept
    assert kept[:3] == ["nexus-store", "bench", "sync"]


def test_bench_errors_belong_to_the_package_exception_tree() -> None:
    """BenchInputError and BenchRunError derive from NexusStoreError (and keep their bases)."""
    assert issubclass(BenchInputError, NexusStoreError)
    assert issubclass(BenchInputError, ValueError)
    assert issubclass(BenchRunError, NexusStoreError)
    assert issubclass(BenchRunError, RuntimeError)


def test_other_work_on_the_machine_is_named_from_the_load_average() -> None:
    """A load average the run's own processes cannot explain is named; one they can is not."""
    ours = _shape(client_cpu=[90.0, 90.0], server_cpu=[90.0], server_is_local=True)
    quiet = limits(_shape(**{**ours.__dict__, "load_average": 3.0}))
    assert not any(line.startswith("other work") for line in quiet)
    busy = limits(_shape(**{**ours.__dict__, "load_average": 7.6}))
    said = [line for line in busy if line.startswith("other work")]
    assert said == [
        "other work on this machine: load average 7.6 on 2 CPUs, more than this run's 3 "
        "processes explain; the figures are below what this set-up can do"
    ]


def test_an_offered_load_beyond_the_machines_cores_is_named_with_its_cost() -> None:
    """CPU per op times the ops offered: more cores than the machine has is a limit; the
    clients' CPU counts per op saved when they saved more than was applied."""
    over = _shape(
        offered_ops_s=20_000.0,
        applied_ops_s=5_000.0,
        interval=1.0,
        client_cpu=[50.0, 50.0],
        server_cpu=[25.0],
        server_is_local=True,
    )
    cost = CpuCost.of(over)
    assert cost is not None
    assert (cost.clients, cost.server, cost.database) == (200.0, 50.0, None)
    assert cost.cores_for(20_000.0) == 5.0
    said = [line for line in limits(over) if "ops/s offered need" in line]
    assert said == [
        "the machine's CPUs: the 20,000 ops/s offered need at least 5.0 cores at the CPU "
        "this run spent per op (clients 200 µs, server 50 µs), and this machine has 2: "
        "its cores carry at most about 8,000 ops/s of clients and server together; lower "
        "--rate, or run the clients on another machine"
    ]
    backlog = CpuCost.of(_shape(**{**over.__dict__, "saved_ops_s": 10_000.0}))
    assert backlog is not None
    assert (backlog.clients, backlog.server) == (100.0, 50.0)
    within = _shape(**{**over.__dict__, "offered_ops_s": 6_000.0})
    assert not any("ops/s offered need" in line for line in limits(within))
    remote = _shape(**{**over.__dict__, "server_is_local": False})
    assert not any("ops/s offered need" in line for line in limits(remote))
