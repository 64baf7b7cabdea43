"""Run every benchmark (or some) one after another, each in its own process.

Usage: ``nexus-store bench [--quick] [--only
store,queue,http,drain,worker,files,store_sync,catchup]`` (also ``python -m
nexus_store.bench`` and, from a source checkout, ``scripts/bench`` and ``python
benchmarks/run.py``).

Each benchmark prints its figures as ratios against a baseline measured in the same run;
this runner only sequences them and reports which ones failed to run. The baselines need
packages that only benchmarks use (``pip install "nexus-store[bench]"``); a benchmark
whose packages are missing is refused up front, with their names.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["BENCHMARKS", "main", "missing_packages", "run_benchmark", "run_benchmarks"]

BENCHMARKS: dict[str, str] = {
    "store": "save() and save_many() against raw sqlite3; memory",
    "queue": "lease+ack against persist-queue; lease latency as the queue grows",
    "http": "HttpBackend to nexus-store serve against a bare pipeline (SQLite, PostgreSQL)",
    "drain": "a sync run draining queued saves to nexus-store serve",
    "worker": "CRITICAL save to server ack through nexus-store worker; idle CPU",
    "files": "uploads (one big file, many small) to nexus-store serve against a bare PUT",
    "store_sync": "store.sync() with default settings draining saves, against HttpBackend alone",
    "catchup": "store.sync() pulling remote changes into a fresh store, against HttpBackend alone",
}
"""Each benchmark's name (``--only``), with what it measures."""

_MODULES = {name: f"nexus_store.bench._{name}" for name in BENCHMARKS}
# What each benchmark imports beyond the package's own dependencies (the bench extra).
_NEEDS: dict[str, tuple[str, ...]] = {
    "store": (),
    "queue": ("persistqueue",),
    "http": ("starlette", "uvicorn", "psycopg", "pgserver"),
    "drain": ("starlette", "uvicorn"),
    "worker": ("starlette", "uvicorn"),
    "files": ("starlette", "uvicorn"),
    "store_sync": ("starlette", "uvicorn"),
    "catchup": ("starlette", "uvicorn"),
}
_EXTRA_HINT = 'pip install "nexus-store[bench]"'


def missing_packages(names: Sequence[str]) -> dict[str, list[str]]:
    """The packages each of ``names`` needs that this interpreter cannot import."""
    missing = {
        name: [p for p in _NEEDS[name] if importlib.util.find_spec(p) is None] for name in names
    }
    return {name: packages for name, packages in missing.items() if packages}


def run_benchmark(name: str, argv: Sequence[str] | None = None) -> None:
    """Run one benchmark in this process (its own command line: ``--quick``, ...).

    Raises:
        KeyError: ``name`` is not a benchmark.
    """
    module = importlib.import_module(_MODULES[name])
    module.main(argv)


def run_benchmarks(names: Sequence[str], *, quick: bool = False) -> int:
    """Run the named benchmarks, each in a fresh process of this interpreter.

    Returns:
        0 if every one ran to its end, 1 otherwise.
    """
    failed: list[str] = []
    for name in names:
        options = ["--quick"] if quick else []
        print(f"\n=== {name} (python -m {_MODULES[name]} {' '.join(options)}) ===", flush=True)
        started = time.perf_counter()
        # The command is this interpreter running a module of this package.
        code = subprocess.call([sys.executable, "-m", _MODULES[name], *options])
        print(f"=== {name}: exit {code} after {time.perf_counter() - started:.0f}s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that did not finish cleanly: {', '.join(failed)}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks; return 0 if all ran, 1 if one failed, 2 for bad usage."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    missing = missing_packages(names)
    if missing:
        for name, packages in missing.items():
            print(f"benchmark {name} needs {', '.join(packages)}: {_EXTRA_HINT}", file=sys.stderr)
        return 2
    return run_benchmarks(names, quick=args.quick)
