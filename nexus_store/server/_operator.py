"""The sync server's operator page: tenants, ops per second, pushes and pulls, refusals.

:class:`OperatorStats` counts what the endpoints do (pushes, pulls, accepted and rejected
ops, rate-limited requests) per tenant, in this server process, since it started; ops per
second are the accepted ops of the last minute over that minute. The page (``GET
/operator``) is plain HTML; its numbers come live from ``GET /operator/events``
(server-sent events, one ``event: stats`` a second while the page is open) and as JSON
from ``GET /operator/stats`` (:class:`OperatorSnapshot`, described in the server's
OpenAPI document). All three need the operator token (``?token=``) that ``nexus-store
serve`` prints with the page's URL when it starts; without one the page does not exist.
"""

from __future__ import annotations

import hmac
import html
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["OperatorSnapshot", "OperatorStats", "TenantStats", "operator_paths", "operator_routes"]

_WINDOW = 60.0


class TenantStats(BaseModel):
    """One tenant's counts since the server started."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    pushes: int = 0
    pulls: int = 0
    ops_accepted: int = 0
    ops_rejected: int = 0
    rate_limited: int = 0


class OperatorSnapshot(BaseModel):
    """What the operator page shows (``GET /operator/stats``)."""

    model_config = ConfigDict(frozen=True)

    started_at: float
    at: float
    ops_per_second: float
    """Accepted ops per second over the last minute."""
    pushes: int
    pulls: int
    ops_accepted: int
    ops_rejected: int
    rate_limited: int
    tenants: list[TenantStats]


class OperatorStats:
    """Counters the endpoints feed (cheap: a dict update per request)."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.closed = False
        """Set by :meth:`close`: the page's event streams end (the server is stopping)."""
        self._tenants: dict[str, dict[str, int]] = {}
        self._recent: deque[tuple[float, int]] = deque()

    def _tenant(self, tenant: str) -> dict[str, int]:
        found = self._tenants.get(tenant)
        if found is None:
            found = self._tenants[tenant] = dict.fromkeys(
                ("pushes", "pulls", "ops_accepted", "ops_rejected", "rate_limited"), 0
            )
        return found

    def pushed(self, tenant: str, accepted: int, rejected: int) -> None:
        """A push was answered: ``accepted`` and ``rejected`` ops."""
        counts = self._tenant(tenant)
        counts["pushes"] += 1
        counts["ops_accepted"] += accepted
        counts["ops_rejected"] += rejected
        now = time.monotonic()
        self._recent.append((now, accepted))
        while self._recent and self._recent[0][0] < now - _WINDOW:
            self._recent.popleft()

    def close(self) -> None:
        """End the operator page's event streams within a second (server shutdown)."""
        self.closed = True

    def pulled(self, tenant: str) -> None:
        """A pull was answered."""
        self._tenant(tenant)["pulls"] += 1

    def limited(self, tenant: str) -> None:
        """A request was refused by the tenant's rate limit (429)."""
        self._tenant(tenant)["rate_limited"] += 1

    def snapshot(self) -> OperatorSnapshot:
        """The counts now."""
        now = time.monotonic()
        recent = sum(n for t, n in self._recent if t >= now - _WINDOW)
        window = min(_WINDOW, max(1.0, time.time() - self.started_at))
        tenants = [
            TenantStats(tenant=name, **counts) for name, counts in sorted(self._tenants.items())
        ]
        return OperatorSnapshot(
            started_at=self.started_at,
            at=time.time(),
            ops_per_second=round(recent / window, 3),
            pushes=sum(t.pushes for t in tenants),
            pulls=sum(t.pulls for t in tenants),
            ops_accepted=sum(t.ops_accepted for t in tenants),
            ops_rejected=sum(t.ops_rejected for t in tenants),
            rate_limited=sum(t.rate_limited for t in tenants),
            tenants=tenants,
        )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nexus-store server</title>
<style>
body {{ margin: 0; font: 14px/1.45 system-ui, sans-serif; color: #1d2433; background: #f6f7fb; }}
header {{ padding: .75rem 1rem; background: #fff; border-bottom: 1px solid #dde2ea; }}
h1 {{ font-size: 1.1rem; margin: 0; }} main {{ padding: 1rem; display: grid; gap: 1rem; }}
.cards {{ display: grid; gap: .5rem; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); }}
.card {{ background: #fff; border: 1px solid #dde2ea; border-radius: 10px; padding: .6rem .8rem; }}
.card b {{ display: block; font-size: 1.4rem; }}
table {{ width: 100%; border-collapse: collapse; background: #fff; }}
th, td {{ text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #dde2ea; }}
td.n, th.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
a {{ color: #2f5bd3; }}
</style></head>
<body data-token="{token}"><header><h1>nexus-store server</h1>
<a href="/openapi.json">OpenAPI document</a> · <span id="live">connecting</span></header>
<main><div class="cards">
<div class="card">ops/s<b id="ops_per_second">{ops_per_second}</b></div>
<div class="card">pushes<b id="pushes">{pushes}</b></div>
<div class="card">pulls<b id="pulls">{pulls}</b></div>
<div class="card">ops accepted<b id="ops_accepted">{ops_accepted}</b></div>
<div class="card">ops rejected<b id="ops_rejected">{ops_rejected}</b></div>
<div class="card">rate limited<b id="rate_limited">{rate_limited}</b></div>
</div>
<table><thead><tr><th>tenant</th><th class="n">pushes</th><th class="n">pulls</th>
<th class="n">accepted</th><th class="n">rejected</th><th class="n">rate limited</th></tr>
</thead><tbody id="tenants">{rows}</tbody></table></main>
<script>
(function () {{
  var q = "?token=" + encodeURIComponent(document.body.getAttribute("data-token"));
  var keys = ["ops_per_second", "pushes", "pulls", "ops_accepted", "ops_rejected", "rate_limited"];
  function esc(v) {{
    var d = document.createElement("span"); d.textContent = v; return d.innerHTML;
  }}
  var source = new EventSource("/operator/events" + q);
  source.addEventListener("stats", function (ev) {{
    var s = JSON.parse(ev.data);
    keys.forEach(function (k) {{ document.getElementById(k).textContent = s[k]; }});
    document.getElementById("tenants").innerHTML = s.tenants.map(function (t) {{
      return "<tr><td>" + esc(t.tenant) + "</td><td class=n>" + t.pushes + "</td><td class=n>" +
        t.pulls + "</td><td class=n>" + t.ops_accepted + "</td><td class=n>" + t.ops_rejected +
        "</td><td class=n>" + t.rate_limited + "</td></tr>";
    }}).join("");
    document.getElementById("live").textContent = "live";
  }});
  source.onerror = function () {{ document.getElementById("live").textContent = "reconnecting"; }};
}})();
</script></body></html>
"""


def _render(snapshot: OperatorSnapshot, token: str) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(t.tenant)}</td><td class=n>{t.pushes}</td>"
        f"<td class=n>{t.pulls}</td><td class=n>{t.ops_accepted}</td>"
        f"<td class=n>{t.ops_rejected}</td><td class=n>{t.rate_limited}</td></tr>"
        for t in snapshot.tenants
    )
    fields = snapshot.model_dump(exclude={"tenants"})
    return _PAGE.format(token=html.escape(token, quote=True), rows=rows, **fields)


def operator_routes(stats: OperatorStats, token: str | None) -> list[Route]:
    """The operator page's routes (none without a token)."""
    if not token:
        return []

    def allowed(request: Request) -> bool:
        given = request.query_params.get("token") or ""
        return hmac.compare_digest(given, token)

    def forbidden() -> Response:
        return JSONResponse({"error": "forbidden", "message": "the operator token"}, 403)

    async def page(request: Request) -> Response:
        if not allowed(request):
            return forbidden()
        return HTMLResponse(_render(stats.snapshot(), token))

    async def snapshot(request: Request) -> Response:
        if not allowed(request):
            return forbidden()
        return Response(stats.snapshot().model_dump_json(), media_type="application/json")

    async def events(request: Request) -> Response:
        if not allowed(request):
            return forbidden()

        async def stream() -> AsyncIterator[bytes]:
            while not stats.closed and not await request.is_disconnected():
                yield f"event: stats\ndata: {stats.snapshot().model_dump_json()}\n\n".encode()
                await anyio.sleep(1.0)  # a clock for the counters, not a wait for work

        return StreamingResponse(stream(), media_type="text/event-stream")

    return [
        Route("/operator", page),
        Route("/operator/stats", snapshot),
        Route("/operator/events", events),
    ]


def operator_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """The operator endpoints for the OpenAPI document: (paths, component schemas)."""
    schema = OperatorSnapshot.model_json_schema(ref_template="#/components/schemas/{model}")
    components = {"OperatorSnapshot": {k: v for k, v in schema.items() if k != "$defs"}}
    components.update(schema.get("$defs", {}))
    token = [{"name": "token", "in": "query", "required": True, "schema": {"type": "string"}}]
    paths = {
        "/operator/stats": {
            "get": {
                "summary": "Operator counts: tenants, ops per second, pushes, pulls, refusals",
                "parameters": token,
                "responses": {
                    "200": {
                        "description": "The counts of this server process.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/OperatorSnapshot"}
                            }
                        },
                    },
                    "403": {"description": "No or a wrong operator token."},
                },
            }
        },
        "/operator/events": {
            "get": {
                "summary": "Operator counts, live: `event: stats` each second",
                "parameters": token,
                "responses": {
                    "200": {
                        "description": "Server-sent events; data is an OperatorSnapshot.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    return paths, components
