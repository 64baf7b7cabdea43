"""``nexus-store bench`` from the package as pip installs it (a wheel, not this checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_an_installed_package_runs_bench_local(tmp_path: Path) -> None:
    """A non-editable install has every bench module: --help and a quick bench local work."""
    target = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, ROOT],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert (target / "nexus_store" / "bench" / "_commands.py").is_file()
    # The installed copy comes first on the path; the dependencies come from this venv.
    env = {**os.environ, "PYTHONPATH": str(target)}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nexus_store", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    where = run("--version")
    assert where.returncode == 0, where.stderr
    origin = subprocess.run(
        [sys.executable, "-c", "import nexus_store; print(nexus_store.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert origin.stdout.strip().startswith(str(target))
    helped = run("bench", "--help")
    assert helped.returncode == 0, helped.stderr
    for name in ("local", "sync", "server"):
        assert name in helped.stdout
    done = run("bench", "local", "--quick", "--json", "out.json")
    assert done.returncode == 0, done.stderr
    figures = {f["key"]: f for f in json.loads((work / "out.json").read_text())["figures"]}
    assert figures["local.save_full.ratio"]["value"] > 0
