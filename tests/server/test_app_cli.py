"""``nexus-store serve`` and ``nexus-store token``: options, refusals, start and stop."""

from __future__ import annotations

import subprocess
import sys
import time

import anyio
import pytest
from typer.testing import CliRunner

from nexus_store import NetworkError
from nexus_store.backends import HttpBackend
from nexus_store.cli import app
from nexus_store.server._auth import SignedTokenVerifier
from nexus_store.server._run import make_verifier
from nexus_store.testing import ServerProcess, ServerStartError

SECRET = "cli-secret-0123456789abcdef01234"


def test_serve_refuses_to_start_without_credentials() -> None:
    """With neither --token nor --secret the server would refuse everyone: exit 2, said why."""
    result = CliRunner().invoke(app, ["serve", "--database", "memory://", "--port", "0"], env={})
    assert result.exit_code == 2
    assert "--token" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--token", "no-equals-sign"],
        ["--token", "t=a", "--max-body", "lots"],
        ["--token", "t=a", "--rate", "fast"],
        ["--secret", "short"],
        ["--token", "t=a", "--max-clock-offset", "0"],
        ["--token", "t=a", "--max-clock-offset", "-5"],
        ["--token", "t=a", "--max-clock-offset", "inf"],
    ],
)
def test_serve_refuses_bad_options(args: list[str]) -> None:
    """Malformed tokens, sizes, rates or secrets exit with code 2 before serving."""
    result = CliRunner().invoke(
        app, ["serve", "--database", "memory://", "--port", "0", *args], env={}
    )
    assert result.exit_code == 2, result.output


@pytest.mark.anyio
async def test_token_command_issues_verifiable_tokens() -> None:
    """`nexus-store token` prints an HS256 JWT the server's verifier maps to the tenant."""
    result = CliRunner().invoke(
        app, ["token", "--tenant", "shop-7", "--ttl", "60"], env={"NEXUS_STORE_SECRET": SECRET}
    )
    assert result.exit_code == 0
    token = result.output.strip()
    assert token.count(".") == 2
    assert not token.startswith("nxs1.")
    assert await make_verifier({}, SECRET).verify(token) == "shop-7"


def test_a_bad_database_fails_startup_with_the_servers_log() -> None:
    """A storage URL that names nothing: the process exits and ServerStartError shows why."""
    with pytest.raises(ServerStartError, match="unknown storage scheme"):
        ServerProcess("nosuchdb://x", tokens={"t": "a"}, startup_timeout=30).start()


def test_help_lists_the_options() -> None:
    """`nexus-store serve --help` documents every option of the issue."""
    result = subprocess.run(
        [sys.executable, "-c", "from nexus_store.cli import main; main()", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": ""},
        check=True,
    )
    for option in (
        "--host",
        "--port",
        "--database",
        "--token",
        "--secret",
        "--max-body",
        "--max-batch",
        "--rate",
        "--max-clock-offset",
    ):
        assert option in result.stdout


@pytest.mark.anyio
async def test_stop_ends_open_event_streams_at_once() -> None:
    """SIGTERM with a client listening: the stream ends and the process exits well within
    uvicorn's graceful timeout; the client sees a NetworkError, not a hang."""
    server = ServerProcess("memory://", secret=SECRET).start()
    try:
        token = SignedTokenVerifier(SECRET).issue("listener")
        async with HttpBackend(server.base_url, token=token) as remote, remote.watch() as heads:
            with anyio.fail_after(20):
                assert await anext(heads) == 0
                started = time.monotonic()
                await anyio.to_thread.run_sync(server.stop)
                stopped_in = time.monotonic() - started
                with pytest.raises(NetworkError):
                    await anext(heads)
    finally:
        server.stop()
    assert stopped_in < 4.0
