"""A long drain holds a bounded number of ops: its memory does not grow with the queue.

Real parts: a queue of 1,000,000 saves in a store file, drained by one sync run in a fresh
process through ``HttpBackend`` to a ``nexus-store serve`` process (the drain benchmark's
child, :func:`nexus_store.bench._drain.drain`). Slow (two minutes or more): ``-m slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_store.bench._drain import TOKEN, build_store, drain
from nexus_store.testing import ServerProcess

pytestmark = pytest.mark.slow

_OPS = 1_000_000
_GROWTH_MIB = 20
"""The most the draining process may grow. A bounded run grows about 10 MiB, at 100,000
ops as at 1,000,000. The backlog this guards against grew 97-220 MiB in a drain of
1,000,000 (it held 114,628 leased ops at once)."""


def test_a_drain_of_a_million_saves_stays_within_a_few_batches_of_memory(tmp_path: Path) -> None:
    """Every save arrives, once; the draining process grows by a few batches."""
    with ServerProcess(f"sqlite:///{tmp_path}/server.db", tokens={TOKEN: "bench"}) as server:
        build_store(tmp_path / "client.db", _OPS)
        figures = drain(tmp_path / "client.db", server.base_url)
    assert figures["pushed"] == _OPS
    assert figures["left"] == 0
    growth = figures["peak_rss_mib"] - figures["rss_before_mib"]
    assert growth < _GROWTH_MIB, figures
