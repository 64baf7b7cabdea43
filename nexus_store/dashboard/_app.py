"""The dashboard's ASGI app (Starlette): the page, its JSON, its live event stream, its buttons.

Routes (all but the static assets need the access token, as ``?token=`` or the header
``X-Dashboard-Token``; the page's script passes it on):

- ``GET /``: the page, rendered on the server with the current state.
- ``GET /api/state``: :class:`~._state.DashboardState` as JSON.
- ``GET /api/events``: server-sent events; an ``event: state`` with the whole state on
  connect and each time it changes. Nothing polls: a change to the file (a save, a run, an
  ack, by any process) wakes a watcher on the file's WAL (:mod:`nexus_store.sync._wal_watch`),
  and a service running in this process reports its status changes directly.
- ``GET /api/jobs/{job}/history``: a job's runs.
- ``POST /api/{dead|quarantine|jobs}/{key}/{verb}``: the buttons (:mod:`._actions`).
- ``GET /openapi.json``: the OpenAPI document of the JSON above.
- ``GET /static/...``: the page's script and style, shipped in the package (no CDN).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._database import Database
from .._exceptions import NexusStoreError
from ..queue import PrioritySyncQueue
from ..sync._wal_watch import WalChangeSource
from ..sync.workmanager._adapter import _run_to_task_run
from ..sync.workmanager._persistence import WorkStore
from ._actions import apply_action
from ._openapi import dashboard_openapi
from ._page import render_page
from ._state import DashboardState, read_state

__all__ = ["Dashboard", "create_dashboard_app"]

logger = logging.getLogger("nexus_store.dashboard")
STATIC = Path(__file__).parent / "static"
_KEEPALIVE = 15.0
_MAX_TRANSITIONS = 50


class Dashboard:
    """The dashboard of one store file: its state, its listeners, its token.

    Args:
        path: the store's database file.
        token: the access token the page's URL carries.
        status: the live status of a service in this process (``None``: read from the file).
    """

    def __init__(
        self, path: str | Path, token: str, status: Callable[[], str] | None = None
    ) -> None:
        self.path = Path(path)
        self.token = token
        self._status = status
        self._transitions: list[tuple[float, str]] = []
        self._version = 0
        self._changed = anyio.Event()
        self._state: DashboardState | None = None
        self._closing = False
        self.database: Database | None = None
        self.queue: PrioritySyncQueue | None = None

    # -- state --------------------------------------------------------------------------

    def _read(self) -> DashboardState:
        assert self.database is not None
        assert self.queue is not None
        live = self._status() if self._status is not None else None
        state = read_state(self.database, self.queue, transitions=self._transitions, status=live)
        if not self._transitions or self._transitions[-1][1] != state.status:
            self._transitions.append((time.time(), state.status))
            del self._transitions[:-_MAX_TRANSITIONS]
            state = state.model_copy(update={"transitions": list(self._transitions)})
        return state

    async def refresh(self) -> None:
        """Read the file again; wake the listeners if anything they show changed."""
        state = await anyio.to_thread.run_sync(self._read)
        previous = self._state
        self._state = state
        if previous is None or previous.model_copy(update={"at": 0}) != state.model_copy(
            update={"at": 0}
        ):
            self._version += 1
            changed, self._changed = self._changed, anyio.Event()
            changed.set()

    def status_changed(self, _status: object = None) -> None:
        """A service in this process changed its status (call on the loop's thread)."""
        changed, self._changed = self._changed, anyio.Event()
        self._version += 1
        changed.set()

    def close_streams(self) -> None:
        """End every event stream (the page is stopping); the pages show "offline"."""
        self._closing = True
        self.status_changed()

    async def current(self) -> DashboardState:
        """The latest state (read now if none yet)."""
        if self._state is None:
            await self.refresh()
        assert self._state is not None
        return self._state

    # -- lifecycle ------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the file and follow its changes while the block runs."""
        self.database = await anyio.to_thread.run_sync(lambda: Database(self.path))
        self.queue = PrioritySyncQueue(self.database)
        source = WalChangeSource(self.path)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow, source)
                await self.refresh()
                try:
                    yield
                finally:
                    source.close()
                    tg.cancel_scope.cancel()
        finally:
            self.database.close()

    async def _follow(self, source: WalChangeSource) -> None:
        async for _ in source.changes():
            try:
                await self.refresh()
            except NexusStoreError:
                logger.exception("reading the file for the dashboard failed")

    # -- requests -------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        """Whether the request carries the access token."""
        given = request.query_params.get("token") or request.headers.get("x-dashboard-token")
        return given is not None and hmac.compare_digest(given, self.token)

    async def events(self, request: Request) -> AsyncIterator[bytes]:
        """The live stream: the state on connect and each time it changes."""
        sent = -1
        while not self._closing:
            if await request.is_disconnected():
                return
            if sent != self._version:
                changed = self._changed
                if self._status is not None:
                    await self.refresh()
                state = await self.current()
                sent = self._version
                yield f"event: state\ndata: {state.model_dump_json()}\n\n".encode()
            else:
                changed = self._changed
            with anyio.move_on_after(_KEEPALIVE) as scope:
                await changed.wait()
            if self._closing:
                return
            if scope.cancelled_caught:
                yield b": keep-alive\n\n"


def create_dashboard_app(dashboard: Dashboard, *, own_lifecycle: bool = True) -> Starlette:
    """The Starlette app of ``dashboard`` (see the module docstring).

    Args:
        dashboard: the dashboard to serve.
        own_lifecycle: open and follow the file with the app's lifespan (``False`` when the
            caller runs ``dashboard.running()`` itself).
    """

    def guard(request: Request) -> Response | None:
        if dashboard.authorized(request):
            return None
        return JSONResponse(
            {"error": "forbidden", "message": "open the URL the dashboard printed (its token)"},
            status_code=403,
        )

    async def page(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        state = await dashboard.current()
        return HTMLResponse(render_page(state, dashboard.token))

    async def state(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        return Response(
            (await dashboard.current()).model_dump_json(), media_type="application/json"
        )

    async def events(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        return StreamingResponse(
            dashboard.events(request),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def history(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        job = request.path_params["job"]
        database = dashboard.database
        assert database is not None

        def read() -> list[dict[str, Any]]:
            runs = [
                _run_to_task_run(r)
                for r in WorkStore(database).runs(limit=10_000)
                if r.worker_name == job
            ][:50]
            return [json.loads(run.model_dump_json()) for run in runs]

        return JSONResponse({"job": job, "runs": await anyio.to_thread.run_sync(read)})

    async def action(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        database, queue = dashboard.database, dashboard.queue
        assert database is not None
        assert queue is not None
        target = request.path_params["target"]
        key = request.path_params["key"]
        verb = request.path_params["verb"]
        try:
            message = await anyio.to_thread.run_sync(
                apply_action, database, queue, target, key, verb
            )
        except NexusStoreError as exc:
            return JSONResponse({"ok": False, "message": str(exc)}, status_code=400)
        await dashboard.refresh()
        return JSONResponse({"ok": True, "message": message})

    async def openapi(request: Request) -> Response:
        return JSONResponse(dashboard_openapi())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if own_lifecycle:
            async with dashboard.running():
                yield
        else:
            yield

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/state", state),
            Route("/api/events", events),
            Route("/api/jobs/{job}/history", history),
            Route("/api/{target}/{key}/{verb}", action, methods=["POST"]),
            Route("/openapi.json", openapi),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
