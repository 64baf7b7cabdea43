"""The dashboard: a local web page over a store file, and the JSON behind it.

- :class:`Dashboard` and :func:`create_dashboard_app`: the page (server-rendered HTML and a
  small shipped script, no CDN), its JSON (:class:`DashboardState`), a server-sent event
  stream of live state, and the buttons (retry/discard dead letters and quarantined
  changes; enable, disable, run now and history of jobs); an OpenAPI document.
- :func:`serve_dashboard`: serve it on 127.0.0.1 with a random access token in its URL
  (``nexus-store dashboard``, ``nexus-store worker --dashboard``).

The sync server's operator page lives with the server (:mod:`nexus_store.server`), which
imports nothing above it.

Imports run downward only: the dashboard reads the background service's tables, the queue
and the store's file; only the command line imports it.
"""

from ._app import Dashboard, create_dashboard_app
from ._serve import new_token, serve_dashboard
from ._state import DashboardState

__all__ = ["Dashboard", "DashboardState", "create_dashboard_app", "new_token", "serve_dashboard"]
