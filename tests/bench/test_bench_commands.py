"""``nexus-store bench local | sync | server`` run for real, briefly, against real servers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import msgpack
import psutil
import pytest

from nexus_store.testing import (
    RawAnswer,
    ScriptedRequest,
    ScriptedServer,
    ServerProcess,
    http_answer,
)

_CLI = [sys.executable, "-m", "nexus_store"]
TOKEN = "bench-test-token"
# A short sync run: 2 clients, 1 s of warm-up, 2 s measured.
SHORT = ["--quick", "--clients", "2", "--duration", "2", "--warmup", "1"]


def _run(args: list[str], cwd: Path, *, token: str | None = TOKEN, timeout: float = 240) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "NEXUS_STORE_TOKEN"}
    if token is not None:
        env["NEXUS_STORE_TOKEN"] = token
    return subprocess.run(
        [*_CLI, "bench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real sync server on SQLite for this module's runs."""
    folder = tmp_path_factory.mktemp("bench-server")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens={TOKEN: "bench"}) as process:
        yield process


def _figures(doc: dict[str, Any]) -> dict[str, Any]:
    return {f["key"]: f for f in doc["figures"]}


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_local_keeps_every_figure_and_leaves_no_file(tmp_path: Path) -> None:
    """bench local --quick measures beside raw sqlite3, keeps the figures, removes its files."""
    where = tmp_path / "disk"
    done = _run(["local", "--quick", "--db", str(where / "app.db"), "--json", "out.json"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "save_many(100)" in done.stdout
    doc = json.loads((tmp_path / "out.json").read_text())
    figures = _figures(doc)
    for key in (
        "local.save_full.ratio",
        "local.save_normal.ratio",
        "local.save_many_100.ratio",
        "local.lease_ack_full.ratio",
        "local.commit_ms",
    ):
        assert figures[key]["value"] > 0, key
    assert figures["local.save_full.ratio"]["target"] == ">= 0.9"
    assert doc["machine"]["cpu_count"] >= 1
    assert doc["machine"]["disk"]["path"] == str(where.resolve())
    assert doc["versions"]["nexus-store"]
    assert doc["command_line"][:2] == ["nexus-store", "bench"]
    assert list(where.iterdir()) == []


def test_sync_measures_a_real_server_and_keeps_json_plots_and_comparison(
    tmp_path: Path, server: ServerProcess
) -> None:
    """bench sync: figures, nothing lost, charts drawn, a change against an older run."""
    old = {
        "tool": "nexus-store bench",
        "figures": [
            {
                "key": "sync.c2.applied_ops_s",
                "label": "ops/s applied",
                "value": 1.0,
                "unit": "ops/s",
                "better": "higher",
            },
        ],
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    done = _run(
        [
            "sync",
            "--remote",
            server.base_url,
            *SHORT,
            "--mix",
            "4:1:1",
            "--json",
            "out.json",
            "--plot",
            "charts",
            "--compare",
            "old.json",
            "--server-pid",
            str(server.pid),
            "--target-ops",
            "1e12",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "about to send: 2 clients" in done.stderr
    assert "change against old.json" in done.stdout
    assert "better" in done.stdout
    assert "1 target(s) NOT met" in done.stdout
    assert "What limited the run of 2 clients" in done.stdout
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["targets_missed"] == ["sync.c2.applied_ops_s"]
    run = doc["results"]["runs"][0]
    assert run["applied_ops_s"] > 0
    assert run["push_ms"]["p99"] > 0
    assert run["pull_ms"]["count"] > 0
    assert run["poke_ms"]["count"] > 0
    assert run["drain_s"] is not None
    assert run["verification"]["method"] == "pull"
    assert run["verification"]["lost"] == 0
    assert run["verification"]["duplicated"] == 0
    assert run["verification"]["server_items"] == run["written"]
    assert run["server"]["rss_total_peak_mib"] > 0
    assert run["load_average"] >= 0
    assert set(run["errors"]) >= {"429", "5xx", "timeout"}
    figures = _figures(doc)
    assert figures["sync.c2.push_p99_ms"]["target"] == "< 500"
    assert figures["sync.c2.lost"]["met"] is True
    assert doc["machine"]["disk"]["path"]
    for name in ("throughput.png", "latency_cdf.png", "drain.png"):
        assert _is_png(tmp_path / "charts" / name), name


def test_check_exits_1_when_a_target_is_missed(tmp_path: Path, server: ServerProcess) -> None:
    """--check turns a missed target into exit code 1."""
    done = _run(
        [
            "sync",
            "--remote",
            server.base_url,
            "--quick",
            "--clients",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--target-p99-ms",
            "0.001",
            "--check",
        ],
        tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT met" in done.stdout


def test_server_runs_sqlite_beside_the_bare_pipeline_and_floor(tmp_path: Path) -> None:
    """bench server starts its own server, measures it beside bare and floor, counts on it."""
    # Open loop: the clients finish as the window closes, and their CPU is still measured.
    args = ["server", *SHORT, "--rate", "400", "--json", "out.json", "--plot", "charts"]
    done = _run(args, tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    figures = _figures(doc)
    for key in ("wire.ours_ops_s", "wire.bare_ops_s", "wire.floor_ops_s"):
        assert figures[key]["value"] > 0, key
    run = doc["results"]["runs"][0]
    assert run["verification"]["method"] == "database"
    assert run["verification"]["lost"] == 0
    assert run["verification"]["duplicated"] == 0
    assert run["server"]["processes"] == 1
    assert figures["sync.c2.server_rss_mib"]["value"] > 0
    assert run["client_cpu_percent"], run["client_cpu_percent"]
    assert all(p is not None and p > 0 for p in run["client_cpu_percent"])
    assert run["cpu_us_per_op"] is not None
    assert _is_png(tmp_path / "charts" / "throughput.png")


@pytest.mark.postgres
def test_server_runs_postgresql_with_two_server_processes(tmp_path: Path) -> None:
    """bench server --database postgres: two server processes on one PostgreSQL, counted."""
    done = _run(
        ["server", "--database", "postgres", *SHORT, "--no-baseline", "--json", "out.json"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    run = doc["results"]["runs"][0]
    assert run["server"]["processes"] == 2
    assert run["server"]["database_cpu_percent_of_core"] > 0
    assert run["verification"]["method"] == "database"
    assert run["verification"]["lost"] == 0
    assert run["verification"]["duplicated"] == 0
    assert run["verification"]["server_items"] == run["written"]


def _one_line(done: Any, text: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert lines[-1].startswith("nexus-store bench sync: "), lines
    assert text in lines[-1], lines


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    """Nothing listening: one line, exit 2."""
    done = _run(["sync", "--remote", "http://127.0.0.1:9", *SHORT], tmp_path)
    _one_line(done, "cannot reach http://127.0.0.1:9")


def test_a_refused_token_is_one_line(tmp_path: Path, server: ServerProcess) -> None:
    """A token the server does not know: one line, exit 2, no load sent."""
    done = _run(["sync", "--remote", server.base_url, *SHORT], tmp_path, token="wrong")
    _one_line(done, "refused the token")


def test_a_far_host_needs_yes_before_anything_is_sent(tmp_path: Path) -> None:
    """More than the default amount to a host that is not this machine needs --yes."""
    done = _run(
        ["sync", "--remote", "https://bench.invalid", "--clients", "200", "--duration", "60"],
        tmp_path,
    )
    _one_line(done, "pass --yes")
    assert "about to send: 200 clients" in done.stderr
    said = " ".join(done.stderr.split())  # the terminal's width wraps the lines
    assert "of the token's tenant on the server, and leaves them there" in said


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (RawAnswer(http_answer(404, b"not here")), "is not a nexus-store sync server"),
        (RawAnswer(b"\x00\x01garbage\r\n\r\n"), "answered garbage"),
        (RawAnswer(http_answer(200, b"<html>hi</html>")), "is not a nexus-store sync server"),
        (
            RawAnswer(http_answer(301, headers={"location": "https://sync.example.com/health"})),
            "redirects GET /health to https://sync.example.com/health",
        ),
    ],
)
async def test_a_server_that_is_not_ours_is_one_line(
    tmp_path: Path, answer: RawAnswer, text: str
) -> None:
    """A wrong URL or a server answering garbage: one line, exit 2, no traceback."""

    def script(_request: ScriptedRequest) -> RawAnswer:
        return answer

    async with ScriptedServer(script) as scripted:
        done = await anyio.to_thread.run_sync(
            lambda: _run(["sync", "--remote", scripted.url, *SHORT], tmp_path)
        )
    _one_line(done, text)


def _client_processes(pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        return sum(
            "nexus_store.bench._loadclient" in " ".join(child.cmdline())
            for child in psutil.Process(pid).children()
        )
    return 0


def test_ctrl_c_in_a_sweep_keeps_the_runs_done(tmp_path: Path, server: ServerProcess) -> None:
    """Ctrl-C during a sweep's second run: the first run's figures are printed and kept."""
    env = {k: v for k, v in os.environ.items() if k != "NEXUS_STORE_TOKEN"}
    env["NEXUS_STORE_TOKEN"] = TOKEN
    args = ["--quick", "--clients", "1,2", "--duration", "5", "--warmup", "0"]
    with subprocess.Popen(
        [*_CLI, "bench", "sync", "--remote", server.base_url, *args, "--json", "out.json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        process_group=0,  # a terminal's Ctrl-C reaches the whole group, client processes too
    ) as proc:
        # The first run has one client process, the second two: wait for the second.
        deadline = time.monotonic() + 120
        while _client_processes(proc.pid) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the second run did not start"
            time.sleep(0.05)  # polling another process's children: no event to wait on
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert "the run of 2 clients stopped: " in out, out + err
    doc = json.loads((tmp_path / "out.json").read_text())
    assert [run["clients"] for run in doc["results"]["runs"]] == [1]
    assert doc["results"]["stopped"].startswith("the run of 2 clients stopped")
    assert doc["results"]["runs"][0]["verification"]["lost"] == 0


@pytest.mark.postgres
def test_the_bare_pipeline_on_postgresql_takes_concurrent_pushes() -> None:
    """The bare pipeline on PostgreSQL (the baseline of `bench server --database postgres`)
    answers pushes sent over several connections at once, every op upserted once."""
    from nexus_store.bench._bare import BareProcess, push_bare  # noqa: PLC0415
    from nexus_store.testing import shared_postgres  # noqa: PLC0415

    connections, per = 4, 300
    ops = [
        [
            {"op_id": f"o{n}-{i}", "collection": "notes", "item_id": f"c{n}-{i}", "data": {"i": i}}
            for i in range(per)
        ]
        for n in range(connections)
    ]
    with BareProcess(shared_postgres().create_database()) as bare:

        async def push_all() -> None:
            async with anyio.create_task_group() as group:
                for n in range(connections):
                    group.start_soon(push_bare, bare.base_url, ops[n], 50)

        anyio.run(push_all)
        answer = httpx.get(f"{bare.base_url}/pull", params={"limit": 10_000}, timeout=30)
    assert answer.status_code == 200
    changes = msgpack.unpackb(answer.content)["changes"]
    assert sorted(c["item_id"] for c in changes) == sorted(
        op["item_id"] for batch in ops for op in batch
    )
