"""The ``nexus-store`` command line (typer + rich).

Each subcommand lives in its own module and registers itself on :data:`app`.
Exit codes: 0 success, 1 the command ran but something failed (e.g. ops dead-lettered),
2 bad usage or input.
"""

from __future__ import annotations

# Subcommand modules register on import (one per concept).
from . import (  # noqa: F401
    _bench,
    _check,
    _demo,
    _jobs,
    _queue,
    _serve,
    _sync,
    _version_cmd,
    _worker,
)
from ._app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``nexus-store`` console script."""
    app()
