"""Where a benchmark ran: the machine, the disk, the versions, the command line.

What is kept with every ``--json`` file, so that figures from two machines (or two
versions) are never compared without knowing it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import shutil
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from .._version import __version__

__all__ = [
    "command_line",
    "describe_disk",
    "machine",
    "now_iso",
    "process_load",
    "versions",
]

_PACKAGES = ("httpx", "pydantic", "anyio", "starlette", "uvicorn", "psycopg", "msgpack")


def versions() -> dict[str, str]:
    """nexus-store, Python, SQLite and the libraries on the measured paths."""
    out = {
        "nexus-store": __version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
    }
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def describe_disk(path: Path) -> dict[str, Any]:
    """The file system ``path`` lives on: its device, type, mount point and free space."""
    where = path if path.is_dir() else path.parent
    best: Any = None
    resolved = str(where.resolve())
    with contextlib.suppress(OSError):
        for part in psutil.disk_partitions(all=True):
            mount = part.mountpoint
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and (best is None or len(mount) > len(best.mountpoint)):
                best = part
    usage = shutil.disk_usage(where)
    return {
        "path": resolved,
        "device": getattr(best, "device", None),
        "fstype": getattr(best, "fstype", None),
        "mountpoint": getattr(best, "mountpoint", None),
        "free_gb": round(usage.free / 1e9, 1),
    }


def process_load() -> dict[str, float]:
    """The load average over 1, 5 and 15 minutes (what else ran on the machine)."""
    with contextlib.suppress(OSError, AttributeError):
        one, five, fifteen = os.getloadavg()
        return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2)}
    return {}


def machine(disk: Path | None = None) -> dict[str, Any]:
    """CPU count and model, memory, OS, load average, Python, and the disk of ``disk``."""
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    out: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "load_average": process_load(),
    }
    if disk is not None:
        out["disk"] = describe_disk(disk)
    return out


def command_line(argv: Sequence[str] | None = None) -> list[str]:
    """The command as typed, with the value of ``--token`` hidden."""
    args = list(sys.argv if argv is None else argv)
    if args and args[0].endswith(("__main__.py", "nexus-store")):
        args[0] = "nexus-store"
    out: list[str] = []
    hide = False
    for arg in args:
        if hide:
            out.append("***")
            hide = False
        elif arg == "--token":
            out.append(arg)
            hide = True
        elif arg.startswith("--token="):
            out.append("--token=***")
        else:
            out.append(arg)
    return out


def now_iso() -> str:
    """The current time, UTC, ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
