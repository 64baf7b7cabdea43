"""``nexus-store bench``: benchmarks users run, and the developer suite.

Users' subcommands (:mod:`._commands`):

- ``local``: the store and the queue on this disk, beside raw sqlite3 (:mod:`._local`);
- ``sync``: simulated clients, each with its own store file, in client processes,
  against servers someone runs (:mod:`._loadrun`, :mod:`._loadclient`), with the
  server's items counted afterwards (:mod:`._verify`) and what limited the run
  (:mod:`._diagnose`);
- ``server``: servers started here (:mod:`._servers`), loaded the same way, beside the
  bare pipeline and the floor (:mod:`._baseline`).

Their output: a table of figures with targets (:mod:`._figures`, :mod:`._report`),
``--json``, ``--compare``, ``--check``, and ``--plot`` charts (:mod:`._plot`, matplotlib
from the ``[bench]`` extra).

The developer suite, each benchmark against a baseline measured in the same run:

- ``store``: ``save()`` and ``save_many()`` against raw sqlite3; memory.
- ``queue``: lease+ack against persist-queue; lease latency as the queue grows.
- ``http``: :class:`~nexus_store.backends.HttpBackend` to ``nexus-store serve`` against a
  bare Starlette pipeline, on SQLite and PostgreSQL.
- ``drain``: one sync run draining queued saves to ``nexus-store serve``.
- ``worker``: a ``CRITICAL`` save to the server's ack through ``nexus-store worker``; idle
  CPU.
- ``files``: uploads through the sync queue to ``nexus-store serve`` (one big file, many
  small ones) against a bare Starlette route taking a streamed PUT; RSS during the upload.

:func:`run_benchmarks` runs some in fresh processes, :func:`run_benchmark` one in this
process, :func:`main` is the suite's command line (also ``python -m nexus_store.bench``).

Imports run downward only: the benchmarks use the test kit (a real server process, a
real PostgreSQL), the sync engine, the backends, the store and the queue; nothing in the
package imports them but the command line.
"""

from typing import TYPE_CHECKING

from ._loadrun import BenchRunError
from ._options import LoadOptions
from ._plan import BenchInputError
from ._run import BENCHMARKS, main, missing_packages, run_benchmark, run_benchmarks

if TYPE_CHECKING:  # pragma: no cover
    from ._commands import Outputs, console, local_command, server_command, sync_command

__all__ = [
    "BENCHMARKS",
    "BenchInputError",
    "BenchRunError",
    "LoadOptions",
    "Outputs",
    "console",
    "local_command",
    "main",
    "missing_packages",
    "run_benchmark",
    "run_benchmarks",
    "server_command",
    "sync_command",
]

# The commands load the wire baselines (._http), which also run as a module of their own
# (``python -m nexus_store.bench._http``): importing the package must not load them first.
_COMMANDS = frozenset({"Outputs", "console", "local_command", "server_command", "sync_command"})


def __getattr__(name: str) -> object:
    if name in _COMMANDS:
        from . import _commands  # noqa: PLC0415

        return getattr(_commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
