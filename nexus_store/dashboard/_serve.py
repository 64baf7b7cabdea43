"""Serving the dashboard: uvicorn on 127.0.0.1 by default, a fresh access token, its URL.

:func:`serve_dashboard` runs until cancelled; it calls ``on_ready(url)`` once the socket
listens (the URL carries the token: whoever has the URL can steer the file's sync, so
it is printed to the person who started it and nowhere else).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from pathlib import Path

import anyio

from ._app import Dashboard, create_dashboard_app

__all__ = ["new_token", "serve_dashboard"]

_GRACE = 1
"""Seconds uvicorn waits for open requests (the event streams) when the page stops."""


def new_token() -> str:
    """A random access token (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


async def serve_dashboard(
    path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    status: Callable[[], str] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard of ``path`` until cancelled.

    Args:
        path: the store's database file.
        host: the address to listen on (loopback by default).
        port: the port (0: a free one).
        token: the access token (default: a new random one).
        status: the live status of a service in this process, if any.
        on_ready: called with the page's URL (token included) once it listens.
    """
    import uvicorn  # noqa: PLC0415 - the server extra

    dashboard = Dashboard(path, token or new_token(), status=status)
    app = create_dashboard_app(dashboard)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        access_log=False,
        # the page's event streams never end on their own: close them on the way out
        timeout_graceful_shutdown=_GRACE,
    )
    ready = anyio.Event()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            ready.set()

    server = _Server(config)
    shown = f"[{host}]" if ":" in host else host
    stopped = anyio.Event()

    async def announce() -> None:
        await ready.wait()
        if on_ready is not None:
            on_ready(f"http://{shown}:{bound}/?token={dashboard.token}")

    async def run() -> None:
        # Shielded: a cancelled caller asks uvicorn to exit (below) and waits for its own
        # shutdown; cancelling uvicorn's tasks instead logs their CancelledError.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            finally:
                stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            tg.start_soon(run)
            try:
                await stopped.wait()
            finally:
                dashboard.close_streams()
                server.should_exit = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(_GRACE + 5):
                    await stopped.wait()
            tg.cancel_scope.cancel()
    finally:
        sock.close()
