"""``nexus-store upload``: files and watched folders sent to a real server process,
not sent twice across invocations, bad input as one line and exit code 2."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner, Result

from nexus_store import NexusStore
from nexus_store.backends import HttpBackend
from nexus_store.cli import app
from nexus_store.files import Attachment
from nexus_store.testing import ServerProcess

TOKENS = {"tok-a": "tenant-a"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server (SQLite, blobs beside it) for the module."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens=TOKENS) as process:
        yield process


def _upload(server: ServerProcess, db: Path, *args: str) -> Result:
    runner = CliRunner()
    base = ["upload", "--db", str(db), "--remote", server.base_url]
    return runner.invoke(app, [*base, *args], env={"NEXUS_STORE_TOKEN": "tok-a"})


def _on_server(server: ServerProcess, data: bytes) -> bool:
    sha = hashlib.sha256(data).hexdigest()
    answer = httpx.head(
        f"{server.base_url}/v1/blobs/{sha}", headers={"authorization": "Bearer tok-a"}
    )
    return answer.status_code == 200


def test_named_files_are_uploaded(server: ServerProcess, tmp_path: Path) -> None:
    """Files named on the command line reach the server; exit code 0."""
    files = []
    for n in range(3):
        path = tmp_path / f"scan{n}.pdf"
        path.write_bytes(os.urandom(50_000 + n))
        files.append(path)
    result = _upload(server, tmp_path / "up.db", *map(str, files), "--priority", "high")
    assert result.exit_code == 0, result.output + server.log[-5000:]
    assert "uploaded 3 files" in result.output
    assert all(_on_server(server, path.read_bytes()) for path in files)


def test_a_watched_folder_is_sent_once_and_cleaned_up(
    server: ServerProcess, tmp_path: Path
) -> None:
    """--watch --once sends what is in the folder; a second invocation sends nothing again,
    deletes what is done with --delete-after, and sends a new file."""
    folder = tmp_path / "outbox"
    (folder / "sub").mkdir(parents=True)
    first = os.urandom(70_000)
    (folder / "a.jpg").write_bytes(first)
    (folder / "sub" / "b.jpg").write_bytes(b"b" * 1000)
    (folder / "c.part").write_bytes(b"still being written")
    db = tmp_path / "watch.db"
    args = ["--watch", str(folder), "--once", "--settle", "0", "--tag", "cam"]
    result = _upload(server, db, *args)
    assert result.exit_code == 0, result.output
    assert "uploaded 2 files" in result.output
    assert _on_server(server, first)
    assert not _on_server(server, b"still being written")
    (folder / "new.jpg").write_bytes(b"new" * 100)
    result = _upload(server, db, *args, "--delete-after")
    assert result.exit_code == 0, result.output
    assert "uploaded 1 files" in result.output, "only the new file"
    assert not (folder / "a.jpg").exists(), "done and unchanged: deleted"
    assert (folder / "c.part").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.bin"], "missing.bin"),
        (["--watch", "no-such-dir"], "no such folder"),
        ([], "nothing to upload"),
        (["--watch", ".", "--priority", "urgent"], "--priority"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    server: ServerProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    """A missing file or folder, nothing to send, a bad priority: one line, exit code 2."""
    monkeypatch.chdir(tmp_path)
    result = _upload(server, tmp_path / "bad.db", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


class Photo(BaseModel):
    id: str
    image: Attachment | None = None


def test_sync_command_sends_an_apps_files_before_their_records(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`nexus-store sync` on an app's file uploads its attachments, then the records that
    waited for them, and says so."""
    db = tmp_path / "app.db"
    data = os.urandom(300_000)
    with NexusStore[Photo, str](db, model=Photo) as app_store:
        ref = app_store.attach("p1", data, name="a.jpg")
        app_store.save(Photo(id="p1", image=ref))
    result = CliRunner().invoke(
        app,
        ["sync", "--db", str(db), "--remote", server.base_url],
        env={"NEXUS_STORE_TOKEN": "tok-a"},
    )
    assert result.exit_code == 0, result.output
    assert "files: 1 uploaded" in result.output
    assert _on_server(server, data)
    backend = HttpBackend(server.base_url, token="tok-a")
    with NexusStore[Photo, str](tmp_path / "viewer.db", model=Photo, backend=backend) as viewer:
        viewer.sync()
        pulled = viewer.get("p1")
        assert pulled is not None
        assert pulled.image == ref


def test_a_watched_folder_holding_its_own_database_skips_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    """--db inside the watched folder: the database and its WAL are never read or sent
    (reading them outside SQLite would drop its locks); the other files go."""
    folder = tmp_path / "outbox"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(os.urandom(5000))
    args = ["--watch", str(folder), "--once", "--settle", "0"]
    result = _upload(server, folder / "watch.db", *args)
    assert result.exit_code == 0, result.output
    assert "uploaded 1 files" in result.output
