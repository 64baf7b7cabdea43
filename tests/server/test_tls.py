"""`nexus-store serve --tls-cert/--tls-key` serves HTTPS; plain HTTP beyond loopback warns."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pydantic import BaseModel

from nexus_store import NetworkError, NexusStore
from nexus_store.backends import HttpBackend
from nexus_store.server._run import ANNOUNCE_PREFIX, plain_http_warning

LAUNCHER = "from nexus_store.cli import main; main()"


class Note(BaseModel):
    id: str


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority."""
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`nexus-store serve` with a certificate for 127.0.0.1 signed by the test CA."""
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCHER,
            "serve",
            "--database",
            "memory://",
            "--port",
            "0",
            "--tls-cert",
            str(folder / "cert.pem"),
            "--tls-key",
            str(folder / "key.pem"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NEXUS_STORE_TOKENS": "tls-token=tenant-tls"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(ANNOUNCE_PREFIX), line
        yield line.removeprefix(ANNOUNCE_PREFIX).strip()
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_the_server_announces_https_and_syncs_over_tls(
    tls_server: str, ca: trustme.CA, tmp_path: Path
) -> None:
    """A store syncs through TLS with the CA trusted; without it the certificate is refused."""
    assert tls_server.startswith("https://127.0.0.1:")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    backend = HttpBackend(tls_server, token="tls-token", verify=context)
    with NexusStore[Note, str](tmp_path / "app.db", model=Note, backend=backend) as store:
        store.save(Note(id="n1"))
        assert store.sync().pushed == 1
    with NexusStore[Note, str](
        tmp_path / "other.db", model=Note, backend=HttpBackend(tls_server, token="tls-token")
    ) as untrusting:
        untrusting.save(Note(id="n2"))
        summary = untrusting.sync()
        assert summary.pushed == 0
        assert summary.error is not None
        assert "CERTIFICATE_VERIFY_FAILED" in summary.error or "certificate" in summary.error


def test_plain_http_to_a_tls_port_fails(tls_server: str) -> None:
    """Speaking plain HTTP to the TLS port gets no answer a client would accept."""
    plain = tls_server.replace("https://", "http://")
    with NexusStore[Note, str](
        ":memory:", model=Note, backend=HttpBackend(plain, token="tls-token")
    ) as store:
        store.save(Note(id="n1"))
        summary = store.sync()
    assert summary.pushed == 0
    assert summary.error is not None


def test_listening_beyond_loopback_without_tls_warns() -> None:
    """The warning names the problem and the fix; loopback or TLS: nothing to say."""
    warning = plain_http_warning("0.0.0.0", tls=False)
    assert warning is not None
    assert "--tls-cert" in warning
    assert "in clear" in warning
    assert plain_http_warning("0.0.0.0", tls=True) is None
    assert plain_http_warning("127.0.0.1", tls=False) is None
    assert plain_http_warning("::1", tls=False) is None


def test_serve_prints_the_warning_when_it_starts() -> None:
    """`serve --host 0.0.0.0` without TLS prints the warning on stderr (then serves)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "serve", "--host", "0.0.0.0", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NEXUS_STORE_TOKENS": "t=a", "NEXUS_STORE_DATABASE": "memory://"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(ANNOUNCE_PREFIX + "http://0.0.0.0:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "nexus-store serve: warning: listening on 0.0.0.0 without TLS" in err


def test_network_error_type_is_what_a_bad_certificate_raises(tls_server: str) -> None:
    """The backend reports an untrusted certificate as a NetworkError (retryable, typed)."""
    import anyio  # noqa: PLC0415

    async def push() -> None:
        async with HttpBackend(tls_server, token="tls-token") as backend:
            await backend.pull(0)

    with pytest.raises(NetworkError):
        anyio.run(push)
