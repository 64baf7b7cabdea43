"""Damaged files: 1-64 random flipped bytes in copies of a populated store file (its header,
its b-tree pages, its WAL and its -shm). Every case runs in a worker process with a time
bound: crashes 0, hangs 0, untyped errors 0, and no file that fails SQLite's integrity check
is opened and used without the damage being reported."""

from __future__ import annotations

import collections
import os
import random
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("corruption_case.py")
CASE_SECONDS = 20.0
"""A case that takes longer is a hang (a sound case takes a few tens of milliseconds)."""


def _build(folder: Path) -> Path:
    subprocess.run([sys.executable, str(WORKER), "build", str(folder)], check=True, timeout=120)
    source = folder / "source.db"
    assert Path(f"{source}-wal").stat().st_size > 0, "the source should have a WAL"
    return source


def _flip(case: Path, rng: random.Random, sizes: dict[str, int]) -> None:
    """Flip 1-64 random bytes across the header, the pages, the WAL and the -shm."""
    targets = [t for t in ("header", "pages", "wal", "shm") if sizes[t] > 0]
    flips = collections.defaultdict(list)
    for _ in range(rng.randint(1, 64)):
        target = rng.choice(targets)
        if target == "header":
            flips[""].append(rng.randrange(100))
        elif target == "pages":
            flips[""].append(100 + rng.randrange(sizes["pages"]))
        else:
            flips[f"-{target}"].append(rng.randrange(sizes[target]))
    for suffix, offsets in flips.items():
        path = Path(f"{case}{suffix}")
        data = bytearray(path.read_bytes())
        for offset in offsets:
            data[offset] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))


def _make_case(source: Path, folder: Path, rng: random.Random, sizes: dict[str, int]) -> None:
    case = folder / "case.db"
    folder.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{source}{suffix}", f"{case}{suffix}")
    _flip(case, rng, sizes)
    for copy in ("truth", "raw"):
        (folder / copy).mkdir()
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(f"{case}{suffix}", f"{folder / copy / 'case.db'}{suffix}")


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "run"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buffer = b""

    def ask(self, number: int, folder: Path) -> str:
        """Run one case: its result line, ``"hang"`` or ``"crash"``."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{number} {folder}\n".encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + CASE_SECONDS
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout.fileno(), selectors.EVENT_READ)
            while True:
                *lines, self._buffer = self._buffer.split(b"\n")
                for line in lines:
                    if line.startswith(f"result {number} ".encode()):
                        return line.decode()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "hang"
                if not selector.select(remaining):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    return "crash"
                self._buffer += chunk

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _fuzz(tmp_path: Path, cases: int, seed: int) -> collections.Counter[str]:
    source = _build(tmp_path)
    size = source.stat().st_size
    sizes = {
        "header": 100,
        "pages": size - 100,
        "wal": Path(f"{source}-wal").stat().st_size,
        "shm": Path(f"{source}-shm").stat().st_size,
    }
    rng = random.Random(seed)
    tally: collections.Counter[str] = collections.Counter()
    bad: list[str] = []
    worker = _Worker()
    try:
        for number in range(cases):
            folder = tmp_path / f"case{number}"
            _make_case(source, folder, rng, sizes)
            answer = worker.ask(number, folder)
            if answer in ("hang", "crash"):
                tally[answer] += 1
                bad.append(f"case {number}: {answer}")
                worker.close()
                worker = _Worker()
            else:
                _, _, truth, outcomes, *detail = [*answer.split(" ", 4), ""]
                default, *raw = outcomes.split(",")
                kind = default
                if default == "clean" and truth == "truth=damaged":
                    kind = "unreported"
                if "untyped" in outcomes:
                    kind = "untyped"
                tally[kind] += 1
                tally[f"without the check at open: {raw[0] if raw else '-'}"] += 1
                if kind in ("untyped", "unreported"):
                    bad.append(f"case {number}: {kind} {' '.join(detail)}")
            shutil.rmtree(folder)
    finally:
        worker.close()
    print(f"corruption fuzz, {cases} cases (seed {seed}): {dict(sorted(tally.items()))}")
    assert not bad, f"{len(bad)} bad outcomes ({dict(tally)}):\n" + "\n".join(bad[:20])
    return tally


def test_damaged_copies_are_reported_never_crash_or_hang(tmp_path: Path) -> None:
    """300 damaged copies: 0 crashes, 0 hangs, 0 untyped errors, 0 unreported corruptions."""
    tally = _fuzz(tmp_path, cases=300, seed=11)
    assert tally["refused"] + tally["reported"] > 0


@pytest.mark.slow
def test_damaged_copies_1000(tmp_path: Path) -> None:
    """The same over 1,000 damaged copies."""
    _fuzz(tmp_path, cases=1000, seed=1000)
