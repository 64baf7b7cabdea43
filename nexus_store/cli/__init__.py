"""The ``nexus-store`` command line (typer + rich).

Each subcommand lives in its own module and registers itself on :data:`app`.
Exit codes: 0 success, 1 the command ran but something failed (e.g. ops dead-lettered),
2 bad usage or input, 130 interrupted; failures are one line on stderr, never a
traceback (see :mod:`._errors`). ``python -m nexus_store`` is the same command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Subcommand modules register on import (one per concept).
from . import (  # noqa: F401
    _bench,
    _check,
    _dashboard,
    _demo,
    _jobs,
    _queue,
    _serve,
    _sync,
    _upload,
    _version_cmd,
    _worker,
    _worker_install,
)
from ._app import app
from ._errors import run_app

__all__ = ["app", "main"]


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``nexus-store`` console script (and ``python -m nexus_store``)."""
    sys.exit(run_app(app, sys.argv[1:] if args is None else args))
