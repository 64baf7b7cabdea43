"""`nexus-store worker install`: the service files for each OS, and where the token goes.

The unit is checked with ``systemd-analyze verify`` and the install is run with
``--no-start`` everywhere; where a systemd user manager runs, the install is also run for
real (the worker started by systemd drains the file to a real server). The launchd and
Task Scheduler files are checked against their documented formats (launchd.plist(5), the
Task Scheduler schema 1.2).
"""

from __future__ import annotations

import os
import plistlib
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from nexus_store import NexusStore, SyncPriority
from nexus_store.cli import app
from nexus_store.cli._worker_install import (
    ServiceSpec,
    launchd_plist,
    read_token,
    service_name,
    systemd_unit,
    task_xml,
)
from nexus_store.sync._wal_watch import WalChangeSource
from nexus_store.testing import ServerProcess

SECRET = "s3cret-token-value"
FAIL_KEYRING = "keyring.backends.fail.Keyring"
TASK_NS = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"


class Note(BaseModel):
    id: str


def spec(tmp_path: Path, *, keyring: bool) -> ServiceSpec:
    db = tmp_path / "my app.db"
    db.touch()
    token_file = tmp_path / "t.token"
    token_file.write_text(SECRET)
    return ServiceSpec(
        service_name(db),
        db,
        "https://sync.example.com",
        "/usr/bin/python3",
        "entry" if keyring else None,
        None if keyring else token_file,
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies_and_passes_the_token_as_a_credential(tmp_path: Path) -> None:
    """The user unit passes `systemd-analyze verify`, restarts on failure, starts at login,
    and hands the token over as a credential file (never on the command line)."""
    unit = tmp_path / "nexus-store-worker-test.service"
    text = systemd_unit(spec(tmp_path, keyring=False))
    unit.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Restart=on-failure" in text
    assert "WantedBy=default.target" in text
    assert f"LoadCredential=token:{tmp_path / 't.token'}" in text
    assert "--token-file %d/token" in text
    assert "'" in text  # the path with a space is quoted
    assert SECRET not in text


def test_launchd_agent_follows_launchd_plist(tmp_path: Path) -> None:
    """The agent is a valid plist: Label, ProgramArguments, RunAtLoad, KeepAlive on failure;
    the token is a keyring reference."""
    data = plistlib.loads(launchd_plist(spec(tmp_path, keyring=True), tmp_path))
    assert data["Label"].startswith("io.nexus-store.worker.")
    assert data["ProgramArguments"][:4] == ["/usr/bin/python3", "-m", "nexus_store", "worker"]
    assert data["ProgramArguments"][-2:] == ["--token-keyring", "entry"]
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert SECRET not in str(data)


def test_task_scheduler_xml_follows_the_task_schema(tmp_path: Path) -> None:
    """The task XML has the schema's namespace and sections: a logon trigger, restart on
    failure, no time limit, one Exec action; the token is a keyring reference."""
    text = task_xml(spec(tmp_path, keyring=True))
    root = ET.fromstring(text.split("\n", 1)[1])  # the declaration names UTF-16 encoding
    assert root.tag == f"{TASK_NS}Task"
    assert root.get("version") == "1.2"
    sections = [child.tag.removeprefix(TASK_NS) for child in root]
    assert sections == ["RegistrationInfo", "Triggers", "Principals", "Settings", "Actions"]
    assert root.find(f"{TASK_NS}Triggers/{TASK_NS}LogonTrigger") is not None
    settings = root.find(f"{TASK_NS}Settings")
    assert settings is not None
    assert settings.findtext(f"{TASK_NS}ExecutionTimeLimit") == "PT0S"
    assert settings.find(f"{TASK_NS}RestartOnFailure/{TASK_NS}Count") is not None
    exec_ = root.find(f"{TASK_NS}Actions/{TASK_NS}Exec")
    assert exec_ is not None
    assert exec_.findtext(f"{TASK_NS}Command") == "/usr/bin/python3"
    assert '"' in (exec_.findtext(f"{TASK_NS}Arguments") or "")  # the spaced path quoted
    assert SECRET not in text


def test_install_writes_the_unit_and_a_private_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a keyring, install keeps the token in a 0600 file the unit refers to; the
    worker reads it back with --token-file; uninstall removes both."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    db = tmp_path / "app.db"
    db.touch()
    runner = CliRunner()
    args = ["worker", "install", "--db", str(db), "--remote", "https://s.example", "--no-start"]
    result = runner.invoke(app, args, env={"NEXUS_STORE_TOKEN": SECRET})
    assert result.exit_code == 0, result.output
    name = service_name(db)
    unit = tmp_path / "config" / "systemd" / "user" / f"nexus-store-worker-{name}.service"
    token = tmp_path / "config" / "nexus-store" / "credentials" / f"{name}.token"
    assert SECRET not in unit.read_text()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert read_token(token, None) == SECRET
    assert "mode 0600" in result.output
    status = runner.invoke(app, ["worker", "status", "--db", str(db)])
    assert "installed" in status.output
    removed = runner.invoke(app, ["worker", "uninstall", "--db", str(db)])
    assert removed.exit_code == 0, removed.output
    assert not unit.exists()
    assert not token.exists()


@pytest.fixture
def user_manager() -> None:
    """A running systemd user manager (skip where there is none, e.g. in containers)."""
    if not sys.platform.startswith("linux") or shutil.which("systemctl") is None:
        pytest.skip("not Linux with systemd")
    done = subprocess.run(
        ["systemctl", "--user", "show-environment"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"no systemd user manager here: {done.stderr.strip()}")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from nexus_store.cli import main; main()", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


async def _acked(path: Path, item_id: str, seconds: float) -> None:
    """Wait (on the file's commits, no sleeping) until the item's op left the queue."""
    source = WalChangeSource(path)
    wake = anyio.Event()

    async def follow() -> None:
        nonlocal wake
        async for _ in source.changes():
            wake.set()

    with NexusStore(path, model=Note) as store, anyio.fail_after(seconds):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.wait_all_tasks_blocked()  # watching before the first look
            while store.is_pending(item_id):
                await wake.wait()
                wake = anyio.Event()
            source.close()
            tg.cancel_scope.cancel()


@pytest.mark.usefixtures("user_manager")
def test_install_runs_the_worker_under_the_user_manager(tmp_path: Path) -> None:
    """For real where a user manager runs: install starts the unit, the worker drains the
    file to a real server with the token from its credential, status says active, uninstall
    stops it and removes the unit and the token file."""
    db = tmp_path / "app.db"
    with NexusStore(db, model=Note) as store:
        store.save(Note(id="before-install"))
    with ServerProcess(tokens={SECRET: "install"}) as server:
        installed = _cli(
            "worker",
            "install",
            "--db",
            str(db),
            "--remote",
            server.base_url,
            env={"NEXUS_STORE_TOKEN": SECRET, "PYTHON_KEYRING_BACKEND": FAIL_KEYRING},
        )
        try:
            assert installed.returncode == 0, installed.stderr
            assert "started" in installed.stdout
            with NexusStore(db, model=Note) as store:
                store.save(Note(id="after-install"), priority=SyncPriority.CRITICAL)
            anyio.run(_acked, db, "after-install", 60)
            status = _cli("worker", "status", "--db", str(db))
            assert "state: active" in status.stdout, status.stdout + status.stderr
        finally:
            removed = _cli("worker", "uninstall", "--db", str(db))
        assert removed.returncode == 0, removed.stderr
        gone = _cli("worker", "status", "--db", str(db))
        assert gone.returncode == 1
        assert "not installed" in gone.stdout
