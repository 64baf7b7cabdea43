"""Bad input to any command: one clear line on stderr, exit code 2, never a traceback.

Each case runs the real command in a subprocess, as a user would. The missing ``[server]``
extra is simulated from outside the code under test: a folder on PYTHONPATH holds a
``starlette`` package whose import fails, as it does where the extra is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from nexus_store import NexusStore

LAUNCHER = "from nexus_store.cli import main; main()"


class Note(BaseModel):
    id: str
    text: str = ""


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a store file, a file that is not SQLite, and a starlette that fails."""
    folder = tmp_path_factory.mktemp("cli")
    with NexusStore[Note, str](folder / "app.db", model=Note) as store:
        store.save(Note(id="n1"))
    (folder / "junk.db").write_bytes(b"this is not an SQLite database, just some bytes\n" * 4)
    shadow = folder / "no-server-extra" / "starlette"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ImportError(\"No module named 'starlette'\")\n", encoding="utf-8"
    )
    return folder


CASES: dict[str, tuple[list[str], str]] = {
    # serve
    "serve-sqlite-path": (
        ["serve", "--database", "sqlite:///no/such/folder/server.db", "--token", "t=a"],
        "unable to open database file",
    ),
    "serve-not-sqlite": (["serve", "--database", "sqlite:///junk.db", "--token", "t=a"], "SQLite"),
    "serve-postgres-unreachable": (
        ["serve", "--database", "postgresql://nobody@127.0.0.1:1/none", "--token", "t=a"],
        "PostgreSQL",
    ),
    "serve-no-server-extra": (["serve", "--token", "t=a"], "pip install 'nexus-store[server]'"),
    "serve-no-credentials": (["serve", "--database", "memory://"], "no credentials"),
    "serve-bad-scheme": (["serve", "--database", "nosuch://x", "--token", "t=a"], "scheme"),
    "serve-tls-half": (["serve", "--token", "t=a", "--tls-cert", "app.db"], "--tls-key"),
    "serve-tls-missing": (
        ["serve", "--token", "t=a", "--tls-cert", "nope.pem", "--tls-key", "nope.key"],
        "no such file",
    ),
    "serve-bad-option": (["serve", "--no-such-option"], "No such option"),
    # demo
    "demo-no-server-extra": (["demo"], "pip install 'nexus-store[server]'"),
    "demo-bad-count": (["demo", "--items", "5"], "--items"),
    # worker
    "worker-no-file": (["worker", "--db", "none.db", "--remote", "http://127.0.0.1:9"], "none.db"),
    "worker-not-sqlite": (
        ["worker", "--db", "junk.db", "--remote", "http://127.0.0.1:9"],
        "SQLite",
    ),
    "worker-bad-url": (["worker", "--db", "app.db", "--remote", "ftp://x"], "http(s)"),
    "worker-token-in-clear": (
        ["worker", "--db", "app.db", "--remote", "http://192.0.2.1:8765", "--token", "t"],
        "allow-insecure-http",
    ),
    "worker-bad-log-format": (
        ["worker", "--db", "app.db", "--remote", "http://127.0.0.1:9", "--log-format", "xml"],
        "--log-format",
    ),
    # sync
    "sync-no-file": (["sync", "--db", "none.db", "--remote", "http://127.0.0.1:9"], "none.db"),
    "sync-not-sqlite": (["sync", "--db", "junk.db", "--remote", "http://127.0.0.1:9"], "SQLite"),
    "sync-bad-url": (["sync", "--db", "app.db", "--remote", "not a url"], "http(s)"),
    "sync-no-collection": (
        ["sync", "--db", "app.db", "--remote", "http://127.0.0.1:9", "--collection", "x"],
        "no collection",
    ),
    "sync-token-in-clear": (
        ["sync", "--db", "app.db", "--remote", "http://192.0.2.1:8765", "--token", "t"],
        "allow-insecure-http",
    ),
    # upload
    "upload-not-sqlite": (
        ["upload", "--db", "junk.db", "--remote", "http://127.0.0.1:9", "app.db"],
        "SQLite",
    ),
    "upload-bad-url": (["upload", "--db", "up.db", "--remote", "ftp://x", "app.db"], "http(s)"),
    "upload-no-file": (
        ["upload", "--db", "up.db", "--remote", "http://127.0.0.1:9", "none.bin"],
        "none.bin",
    ),
    # queue, jobs, token, the command itself
    "queue-no-file": (["queue", "--db", "none.db"], "none.db"),
    "queue-not-sqlite": (["queue", "--db", "junk.db"], "SQLite"),
    "jobs-no-file": (["jobs", "--db", "none.db"], "none.db"),
    "jobs-not-sqlite": (["jobs", "--db", "junk.db"], "SQLite"),
    "token-short-secret": (["token", "--tenant", "a", "--secret", "short"], "16 bytes"),
    "unknown-command": (["frobnicate"], "No such command"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_prints_one_line_and_exits_2(case: str, place: Path) -> None:
    """The command exits 2 with one line on stderr naming the problem, and no traceback."""
    args, expected = CASES[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_STORE_")}
    if "no-server-extra" in case:
        env["PYTHONPATH"] = str(place / "no-server-extra")
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *args, "--port", "0"]
        if args[0] == "serve" and "--no-such-option" not in args
        else [sys.executable, "-c", LAUNCHER, *args],
        cwd=place,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"nexus-store {args[0]}: ")
    assert expected in lines[0]


def test_version_and_python_m_are_the_command() -> None:
    """`nexus-store --version` prints the version; `python -m nexus_store` is the command."""
    from nexus_store import __version__  # noqa: PLC0415

    for command in ([sys.executable, "-c", LAUNCHER], [sys.executable, "-m", "nexus_store"]):
        done = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=60, check=True
        )
        assert done.stdout == f"nexus-store {__version__}\n"
    helped = subprocess.run(
        [sys.executable, "-m", "nexus_store", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "serve" in helped.stdout
    assert "worker" in helped.stdout
