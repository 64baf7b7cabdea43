"""Fixtures for the files tests: a real S3-compatible server (moto's, as a process)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexus_store.testing import ServerProcess

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""Credentials for moto's server (it accepts any), for our processes and boto3 clients."""


@dataclass
class MotoServer:
    """A ``moto_server`` process on 127.0.0.1."""

    url: str
    process: subprocess.Popen[str]

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3  # noqa: PLC0415 - only the S3 tests need it

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A real S3-compatible server process for the session (state reset per test by
    using a bucket of its own)."""
    binary = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **S3_ENV},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def pump() -> None:
        with stdout:
            for line in stdout:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    url = None
    deadline = time.monotonic() + 30
    while url is None and (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        if "Running on http://" in line:
            url = line.split("Running on ", 1)[1].split()[0].strip()
    if url is None:
        process.kill()
        pytest.fail("moto_server did not start")
    try:
        yield MotoServer(url, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def limited_server(
    folder: Path, tokens: dict[str, str], *, max_blob: str, quota: str
) -> Iterator[ServerProcess]:
    """A server (SQLite, blobs in a folder beside it) with a 1 MiB body limit and the given
    per-blob and per-tenant limits."""
    with ServerProcess(
        f"sqlite:///{folder}/server.db",
        tokens=tokens,
        max_body="1MiB",
        args=["--max-blob", max_blob, "--blob-quota", quota],
    ) as process:
        yield process
