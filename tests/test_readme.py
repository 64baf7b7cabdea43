"""Every code block of the README runs as written, so a stale line fails the suite.

Python blocks run in a fresh interpreter under ``-W error -X dev`` (nothing may be left
open); a ``print(...)  # -> text`` line must print exactly ``text``. Shell blocks run in
bash with ``nexus-store`` on PATH; a block marked ``# readme-test: background`` (a server)
keeps running while the blocks after it run. Blocks share one folder, in order, as a
reader's terminal would. A block that cannot run here starts with
``# readme-test: skip (why)``.

One substitution is made: the port. The README's server listens on 8765; here the server
gets a free port (``NEXUS_STORE_PORT``) and the clients' ``127.0.0.1:8765`` is rewritten
to it, so that concurrent test runs on one machine do not collide.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "# readme-test:"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXPECTED = re.compile(r"print\(.*\)\s*# -> (.*)$")
# asyncio's debug mode (-X dev) notes each step over 0.1 s: on a busy machine, timing.
SLOW_STEP = re.compile(r"^Executing <.*> took \d+\.\d+ seconds$")


def significant(stderr: str) -> str:
    """stderr without asyncio's notes about slow steps."""
    return "".join(line for line in stderr.splitlines(True) if not SLOW_STEP.match(line.strip()))


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, text, and line number in the README."""

    lang: str
    code: str
    line: int

    @property
    def marker(self) -> str:
        first = self.code.splitlines()[0] if self.code else ""
        return first.removeprefix(MARKER).strip().split(" ")[0] if first.startswith(MARKER) else ""


def blocks() -> list[Block]:
    """The README's Python and shell blocks, in order."""
    text = README.read_text(encoding="utf-8")
    return [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
        if m.group(1) in ("python", "sh")
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_readme_has_runnable_blocks() -> None:
    """The README's blocks are found, and every skipped one says why."""
    found = blocks()
    assert sum(block.lang == "python" for block in found) >= 3
    assert any(block.marker == "background" for block in found)
    for block in found:
        if block.marker == "skip":
            assert "(" in block.code.splitlines()[0], f"README line {block.line}: say why"


def test_every_block_runs_as_written(tmp_path: Path) -> None:
    """Each block exits 0; each annotated print prints what the README says it prints."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_STORE_")}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "NEXUS_STORE_PORT": str(port)}
    background: list[subprocess.Popen[str]] = []
    try:
        for number, block in enumerate(blocks()):
            where = f"README line {block.line}"
            if block.marker == "skip":
                continue
            code = block.code.replace("127.0.0.1:8765", f"127.0.0.1:{port}")
            if block.lang == "python":
                script = tmp_path / f"block_{number}.py"
                script.write_text(code, encoding="utf-8")
                done = subprocess.run(
                    [sys.executable, "-W", "error", "-X", "dev", script.name],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                stderr = significant(done.stderr)
                assert (done.returncode, stderr) == (0, ""), f"{where}: {done.stderr}"
                expected = [
                    m.group(1) for line in code.splitlines() if (m := EXPECTED.search(line))
                ]
                assert done.stdout.splitlines() == expected, where
            elif block.marker == "background":
                server = subprocess.Popen(
                    ["bash", "-euo", "pipefail", "-c", code],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,  # its own process group: stopped as a whole
                )
                background.append(server)
                assert server.stdout is not None
                line = server.stdout.readline()  # the server's "listening on" line
                assert f"127.0.0.1:{port}" in line, f"{where}: {line!r}"
            else:
                done = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", code],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert done.returncode == 0, f"{where}: {done.stdout}\n{done.stderr}"
                assert "Traceback" not in done.stderr, where
    finally:
        for proc in background:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=20)
    assert background, "the README's server block did not run"


PATH_LIKE = re.compile(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|md|toml|txt|json|yml|yaml|cfg))`")


def test_the_readme_cites_only_files_in_the_repository() -> None:
    """Every file path the README names in code spans exists in this checkout."""
    text = README.read_text(encoding="utf-8")
    cited = set(PATH_LIKE.findall(text))
    assert cited, "no file paths found: the pattern is stale"
    missing = sorted(path for path in cited if not (ROOT / path).exists())
    assert not missing, f"the README cites files that are not in the repository: {missing}"


@pytest.mark.parametrize("text", ["`specs/scheduling.md`", "specs/scheduling.md"])
def test_the_scheduling_spec_is_not_cited(text: str) -> None:
    """The README no longer sends readers to a spec file the repository does not have."""
    assert text not in README.read_text(encoding="utf-8")
