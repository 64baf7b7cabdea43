"""``nexus-store bench``: the benchmarks, each against a baseline measured in the same run.

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
process, :func:`main` is the command line (also ``python -m nexus_store.bench``). The
baselines need packages only benchmarks use: ``pip install "nexus-store[bench]"``.

Imports run downward only: the benchmarks use the test kit (a real server process, a
real PostgreSQL), the sync engine, the backends, the store and the queue; nothing in the
package imports them but the command line.
"""

from ._run import BENCHMARKS, main, missing_packages, run_benchmark, run_benchmarks

__all__ = ["BENCHMARKS", "main", "missing_packages", "run_benchmark", "run_benchmarks"]
