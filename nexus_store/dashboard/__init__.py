"""The dashboard: local web pages and the JSON behind them (being built).

What will live here, one module per concept:

- the JSON views the pages read (queue by priority, transfers, dead letters and
  quarantined changes with retry and discard, jobs with enable, disable, run now and their
  history) and a server-sent event stream of live status;
- the pages themselves, with vendored static assets (no CDN), served by
  ``nexus-store dashboard``, by an option of the worker, and as the sync server's operator
  page.

Imports run downward only: the dashboard reads the background service, the queue, the
store, files and the server; only the command line imports it.
"""

__all__: list[str] = []
