"""A measurement in a fresh child process, as an app would have it: a module of this
package run with arguments, whose last line of output is its figures as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

__all__ = ["child_figures"]


def child_figures(module: str, *args: str, what: str = "measurement") -> dict[str, Any]:
    """Run ``python -m module args...`` (with this process's import path) and return the
    JSON object it printed last.

    Raises:
        RuntimeError: the child failed (its stderr is in the message, after ``what``).
    """
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {what} failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures
