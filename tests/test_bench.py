"""``nexus-store bench`` runs from the installed package, wherever it is started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nexus_store.bench import BENCHMARKS

_CLI = [sys.executable, "-m", "nexus_store"]


def test_unknown_benchmark_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A name that is no benchmark is refused with one line on stderr and exit code 2."""
    done = subprocess.run(
        [*_CLI, "bench", "--only", "nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "nexus-store bench: unknown benchmark(s) ['nope']: choose from "
        "store, queue, http, drain, worker, files, store_sync, catchup"
    ]


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_benchmark_loads_outside_a_checkout(tmp_path: Path, name: str) -> None:
    """Each benchmark is a module of the package: it loads from a folder with no checkout."""
    done = subprocess.run(
        [sys.executable, "-m", f"nexus_store.bench._{name}", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout


@pytest.mark.slow
def test_a_quick_run_finishes_outside_a_checkout(tmp_path: Path) -> None:
    """``nexus-store bench --quick --only store`` runs to its end from any folder."""
    done = subprocess.run(
        [*_CLI, "bench", "--quick", "--only", "store"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "=== store: exit 0" in done.stdout
