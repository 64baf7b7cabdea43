"""A bearer token never crosses a network in clear unless the caller says so."""

from __future__ import annotations

import pytest

from nexus_store._http_api import is_loopback_host
from nexus_store.backends import HttpBackend


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("sync.example.com", False),
        ("localhost.example.com", False),
        ("0.0.0.0", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    """Only names and addresses of this machine's loopback interface count as loopback."""
    assert is_loopback_host(host) is loopback


def test_a_token_over_plain_http_to_another_host_is_refused() -> None:
    """http:// with a token to a LAN or internet address fails at once, saying what to do."""
    for url in ("http://192.0.2.10:8765", "http://sync.example.com"):
        with pytest.raises(ValueError, match="allow_insecure_http=True") as refused:
            HttpBackend(url, token="secret-token")
        assert "secret-token" not in str(refused.value)
        with pytest.raises(ValueError, match="plain http"):
            HttpBackend(url, token=lambda: "from-a-provider")


def test_the_safe_cases_and_the_explicit_opt_in_are_allowed() -> None:
    """https, loopback, no token at all, or allow_insecure_http=True: constructed as asked."""
    backends = [
        HttpBackend("https://sync.example.com", token="t"),
        HttpBackend("http://127.0.0.1:8765", token="t"),
        HttpBackend("http://localhost:8765", token="t"),
        HttpBackend("http://[::1]:8765", token="t"),
        HttpBackend("http://192.0.2.10:8765"),
        HttpBackend("http://192.0.2.10:8765", token="t", allow_insecure_http=True),
    ]
    for backend in backends:
        backend.close()  # never used: nothing to close but the client object
