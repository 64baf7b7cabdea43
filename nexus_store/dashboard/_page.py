"""The dashboard page: plain HTML rendered on the server, brought up to date by a small script.

The first paint needs no script (every section is rendered here from the state); the
shipped script (``static/dashboard.js``, no third-party code, nothing from a CDN) then
follows ``/api/events`` and re-renders the sections from each new state, and sends the
buttons' requests. One column on a phone-sized window, a grid on a wide one.
"""

from __future__ import annotations

import html
import json

from ._state import DashboardState

__all__ = ["render_page"]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_page(state: DashboardState, token: str) -> str:
    """The whole page for ``state``; ``token`` goes to the script for its requests."""
    initial = json.dumps(json.loads(state.model_dump_json())).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nexus-store dashboard</title>
<link rel="stylesheet" href="static/dashboard.css?token={_e(token)}">
</head>
<body data-token="{_e(token)}">
<header>
  <h1>nexus-store</h1>
  <span class="path" id="path">{_e(state.path)}</span>
  <span class="status" id="status" data-status="{_e(state.status)}">{_e(state.status)}</span>
  <span class="live" id="live" data-live="connecting">connecting</span>
</header>
<main>
  <section id="sync"><h2>Sync</h2><div class="body"></div></section>
  <section id="queue"><h2>Queue</h2><div class="body"></div></section>
  <section id="transfers"><h2>Transfers</h2><div class="body"></div></section>
  <section id="jobs"><h2>Jobs</h2><div class="body"></div></section>
  <section id="runs"><h2>Last runs</h2><div class="body"></div></section>
  <section id="dead"><h2>Dead letters</h2><div class="body"></div></section>
  <section id="quarantine"><h2>Quarantined changes</h2><div class="body"></div></section>
  <section id="history" hidden><h2>History <span id="history-job"></span></h2>
    <div class="body"></div></section>
</main>
<div id="toast" role="status" aria-live="polite"></div>
<script id="initial-state" type="application/json">{initial}</script>
<script src="static/dashboard.js?token={_e(token)}"></script>
</body>
</html>
"""
