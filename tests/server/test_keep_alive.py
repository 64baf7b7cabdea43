"""The server keeps idle connections open longer than HttpBackend's pool reuses them."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from nexus_store.server._run import uvicorn_config


def test_server_outlasts_the_client_pool_keep_alive() -> None:
    """A connection a client may still reuse is never one the server is closing."""
    config = uvicorn_config(Starlette())
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert config.timeout_keep_alive >= client_expiry + 10
