"""The development install is one that type checkers see, like a released package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(
    not Path(sys.prefix, "pyvenv.cfg").exists(), reason="runs in the project's .venv"
)
def test_mypy_finds_the_package_from_outside_the_checkout(tmp_path: Path) -> None:
    """A user's file in another folder, checked by the venv's mypy, sees nexus_store's types."""
    app = tmp_path / "user_app.py"
    app.write_text(
        "from nexus_store import NexusStore\n"
        "from pydantic import BaseModel\n\n"
        "class Note(BaseModel):\n"
        "    id: str\n\n"
        "store = NexusStore[Note, str](':memory:', model=Note)\n"
        "reveal_type(store.get('n1'))\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), app.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "import-not-found" not in done.stdout, done.stdout
    assert 'Revealed type is "user_app.Note | None"' in done.stdout, done.stdout
