"""Files benchmark: uploads through the sync queue to ``nexus-store serve`` (tus, SQLite,
blobs in a folder) against a bare Starlette route that streams a PUT body to disk.

Run: ``nexus-store bench --only files [--quick]``, or ``python -m nexus_store.bench._files
[--quick]`` (from a checkout also ``python benchmarks/bench_files.py``).

Printed from one run:

1. One big file (1 GiB; 128 MiB with ``--quick``): ``store.attach`` then ``store.sync()``
   (default policy: chunks of 16 MiB) in a child process, in MiB/s of the sync run, as a
   ratio to **bare**: ``httpx`` streaming the same file in one PUT to a Starlette route
   that writes it to disk and fsyncs it once. Target: ratio >= 0.8. Rounds (``--rounds``,
   3 by default, 1 with ``--quick``) each measure bare, ours, bare, with a new blob and a
   synced disk before each; the figure is the median round's, and every round's ratio is
   printed. Also printed: the take-in (hashing and linking the file at ``attach``), how
   much the child's RSS grew during an upload, and the download of the same blob into a
   fresh store (``open_attachment``, read through) with its RSS growth (target for both:
   a few chunk sizes).
2. Many small files (10,000 of 20 KiB; 1,000 with ``--quick``): ``store.upload`` of each,
   then ``store.sync()``, in files/s, against the bare route doing one PUT per file on one
   keep-alive connection. Target: ratio >= 0.5. Also printed: the floors our server sets,
   bare clients sending the same files to it (nothing kept locally), with their ratios to
   bare: one tus ``POST`` carrying each file (how a file goes on its own), and batches of
   200 files per ``POST /v1/blobs`` one after another (how ours sends small files).

Each ratio is followed by "met" or "NOT met" (its target).

The bare figure is the mean of a measurement before and one after ours, in each round.
Both servers fsync what they store (ours: the finished blob and its folder, as it must to
survive a power cut; bare: once per file), so the comparison is of the same durability or
kinder to bare.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from .._store import NexusStore
from ..backends import HttpBackend
from ..testing import ServerProcess
from ._child import child_figures
from ._drain import _peak_rss_mib

TOKEN = "bench-token"
_ANNOUNCE = "nexus-store serve: listening on "
_PIECE = 1024 * 1024
MiB = 1024 * 1024


class Doc(BaseModel):
    """A record (unused: the benchmark sends files only)."""

    id: str


def bare_server_main(folder: str) -> None:
    """Serve ``PUT /put/{name}`` (the body streamed to ``folder/name``, fsynced once)."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from ..server._run import announce, bind_socket, run_loop, serve_app  # noqa: PLC0415

    root = Path(folder)

    async def put(request: Request) -> Response:
        name = str(request.path_params["name"])
        if not name.isalnum():
            return Response(status_code=400)
        with (root / name).open("wb") as handle:
            async for piece in request.stream():
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        return Response(status_code=201)

    async def health(_: Request) -> Response:
        return Response("ok")

    async def main() -> None:
        app = Starlette(routes=[Route("/put/{name}", put, methods=["PUT"]), Route("/", health)])
        sock = bind_socket("127.0.0.1", 0)
        announce(sock)
        await serve_app(app, sock)

    run_loop(main())


class BarePut:
    """The bare PUT server in a subprocess."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> BarePut:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nexus_store.bench._files", "--bare-server", str(self.folder)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(_ANNOUNCE):
            raise RuntimeError(f"the bare server did not start: {line!r}")
        self.base_url = line[len(_ANNOUNCE) :].strip()
        for _ in range(600):
            try:
                httpx.get(f"{self.base_url}/", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.05)
            else:
                return self
        raise RuntimeError("the bare server did not answer")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


def bare_big(url: str, path: Path) -> float:
    """Seconds for one streaming PUT of ``path``."""

    def body() -> Any:
        with path.open("rb") as handle:
            while piece := handle.read(_PIECE):
                yield piece

    size = path.stat().st_size
    start = time.perf_counter()
    with httpx.Client(timeout=600) as client:
        answer = client.put(
            f"{url}/put/big{time.monotonic_ns()}",
            content=body(),
            headers={"content-length": str(size)},
        )
    answer.raise_for_status()
    return time.perf_counter() - start


def bare_small(url: str, paths: list[Path]) -> float:
    """Seconds for one PUT per file, one after another on one connection."""
    start = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for n, path in enumerate(paths):
            answer = client.put(f"{url}/put/s{n}x{time.monotonic_ns()}", content=path.read_bytes())
            answer.raise_for_status()
    return time.perf_counter() - start


def tus_floor(url: str, paths: list[Path]) -> float:
    """Seconds for a bare tus client to send the files to our server the way ours does for
    small files (one ``POST`` with the body, tus creation-with-upload; one after another on
    one connection, nothing kept locally): the floor the server sets for our uploads."""
    from .._blob_api import encode_metadata  # noqa: PLC0415

    tus = {"tus-resumable": "1.0.0", "authorization": f"Bearer {TOKEN}"}
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as client:
        for path in paths:
            data = path.read_bytes() + b"floor"  # not the blob ours sends
            created = client.post(
                "/v1/files",
                headers={
                    **tus,
                    "upload-length": str(len(data)),
                    "upload-metadata": encode_metadata(
                        {"sha256": hashlib.sha256(data).hexdigest()}
                    ),
                    "content-type": "application/offset+octet-stream",
                },
                content=data,
            )
            created.raise_for_status()
            if created.headers.get("upload-offset") != str(len(data)):
                raise RuntimeError("the server did not take the body with the creation")
    return time.perf_counter() - start


def batch_floor(url: str, paths: list[Path], per_batch: int = 200) -> float:
    """Seconds for a bare client to send the files to our server in batches
    (``POST /v1/blobs``, ``per_batch`` files each, one after another on one connection)."""
    from .._blob_api import (  # noqa: PLC0415
        BATCH_TYPE,
        MANIFEST_LENGTH,
        BatchEntry,
        encode_manifest,
    )

    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as client:
        for at in range(0, len(paths), per_batch):
            blobs = [p.read_bytes() + b"batch" for p in paths[at : at + per_batch]]
            entries = [BatchEntry(hashlib.sha256(b).hexdigest(), len(b)) for b in blobs]
            manifest = encode_manifest(entries)
            answer = client.post(
                "/v1/blobs",
                headers={
                    "authorization": f"Bearer {TOKEN}",
                    "content-type": BATCH_TYPE,
                    MANIFEST_LENGTH: str(len(manifest)),
                },
                content=b"".join([manifest, *blobs]),
            )
            answer.raise_for_status()
            if any(a["status"] not in (200, 201) for a in answer.json()["blobs"]):
                raise RuntimeError("the server refused a blob of the batch floor")
    return time.perf_counter() - start


def upload_child(db: str, url: str, source: str) -> None:
    """Take in the file (attached) or the folder's files (uploads), sync them in one
    ``store.sync()``; print the figures as JSON."""
    files = sorted(Path(source).iterdir()) if Path(source).is_dir() else [Path(source)]
    store: NexusStore[Doc, str] = NexusStore(
        db, model=Doc, backend=HttpBackend(url, token=TOKEN, timeout=600)
    )
    try:
        start = time.perf_counter()
        if not Path(source).is_dir():
            store.attach("big", files[0])
        else:
            for name in files:
                store.upload(name)
        take_in = time.perf_counter() - start
        rss_before = _current_rss_mib()
        start = time.perf_counter()
        summary = store.sync()
        seconds = time.perf_counter() - start
        figures = {
            "files": len(files),
            "uploaded": summary.uploaded,
            "bytes": summary.transferred_bytes,
            "left": store.queue.stats().live,
            "take_in_s": take_in,
            "seconds": seconds,
            "rss_before_mib": rss_before,
            "peak_rss_mib": _peak_rss_mib(),
        }
    finally:
        store.close()
    print(json.dumps(figures))


def download_child(db: str, url: str, sha256: str) -> None:
    """Fetch the blob ``sha256`` into a fresh store (``open_attachment``: resumable range
    requests into the local cache), read it through; print the figures as JSON."""
    store: NexusStore[Doc, str] = NexusStore(
        db, model=Doc, backend=HttpBackend(url, token=TOKEN, timeout=600)
    )
    try:
        rss_before = _current_rss_mib()
        start = time.perf_counter()
        digest = hashlib.sha256()
        with store.open_attachment(sha256) as handle:
            while piece := handle.read(_PIECE):
                digest.update(piece)
        seconds = time.perf_counter() - start
        figures = {
            "seconds": seconds,
            "intact": digest.hexdigest() == sha256,
            "rss_before_mib": rss_before,
            "peak_rss_mib": _peak_rss_mib(),
        }
    finally:
        store.close()
    print(json.dumps(figures))


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mib()


def ours(db: Path, url: str, source: Path) -> dict[str, Any]:
    """Run :func:`upload_child` in a fresh process and return its figures."""
    figures = _child("--child", str(db), url, str(source))
    if figures["left"] or figures["uploaded"] != figures["files"]:
        raise RuntimeError(f"the upload did not deliver everything: {figures}")
    return figures


def download(db: Path, url: str, sha256: str) -> dict[str, Any]:
    """Run :func:`download_child` in a fresh process and return its figures."""
    figures = _child("--download-child", str(db), url, sha256)
    if not figures["intact"]:
        raise RuntimeError("the downloaded blob does not hash to its name")
    return figures


def _child(*args: str) -> dict[str, Any]:
    return child_figures("nexus_store.bench._files", *args, what="transfer")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(_PIECE):
            digest.update(piece)
    return digest.hexdigest()


def _make(path: Path, size: int) -> None:
    block = os.urandom(_PIECE)
    with path.open("wb") as handle:
        left = size
        while left > 0:
            handle.write(block[: min(left, _PIECE)])
            left -= _PIECE
        # Different bytes per file (content-addressed: equal files would be one blob).
        handle.write(os.urandom(16))


def _big_round(bare_url: str, url: str, db: Path, big: Path) -> dict[str, Any]:
    """One round of the big file: bare, ours, bare again (a new blob each round: bytes
    appended, so the server's deduplication does not skip it); the disk is synced before
    each measurement, so none starts with another's writes still on their way."""
    with big.open("ab") as handle:
        handle.write(os.urandom(16))
    os.sync()
    before = bare_big(bare_url, big)
    os.sync()
    figures = ours(db, url, big)
    os.sync()
    after = bare_big(bare_url, big)
    bare_s = (before + after) / 2
    return {
        "ours_s": figures["seconds"],
        "bare_runs_s": [round(before, 2), round(after, 2)],
        "ratio": bare_s / figures["seconds"],
        "take_in_s": figures["take_in_s"],
        "rss_growth_mib": figures["peak_rss_mib"] - figures["rss_before_mib"],
    }


def median_round(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The round of the median ratio (of an even number, the lower of the middle two)."""
    return sorted(runs, key=lambda r: float(r["ratio"]))[(len(runs) - 1) // 2]


def run(
    quick: bool = False,
    rounds: int | None = None,
    *,
    big_mib: int | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    """Measure everything; return the figures (the big file's: the median of ``rounds``
    rounds, 3 by default, 1 with ``quick``). ``big_mib`` and ``count`` override the sizes
    (1 GiB and 10,000 files; 128 MiB and 1,000 with ``quick``)."""
    rounds = rounds if rounds is not None else 1 if quick else 3
    big_size = (big_mib or (128 if quick else 1024)) * MiB
    count = count or (1_000 if quick else 10_000)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-files-") as name:
        tmp = Path(name)
        (tmp / "bare").mkdir()
        big = tmp / "big.bin"
        _make(big, big_size)
        small_dir = tmp / "small"
        small_dir.mkdir()
        smalls = []
        for n in range(count):
            path = small_dir / f"f{n:05d}.bin"
            path.write_bytes(os.urandom(20 * 1024))
            smalls.append(path)
        with (
            ServerProcess(f"sqlite:///{tmp}/server.db", tokens={TOKEN: "bench"}) as server,
            BarePut(tmp / "bare") as bare,
        ):
            runs = []
            for n in range(rounds):
                runs.append(_big_round(bare.base_url, server.base_url, tmp / f"big{n}.db", big))
                for stored in (tmp / "bare").iterdir():
                    stored.unlink()
            sha256 = _sha256_of(big)
            fetched = download(tmp / "download.db", server.base_url, sha256)
            middle = median_round(runs)
            size_mib = big.stat().st_size / MiB
            bare_s = sum(middle["bare_runs_s"]) / 2
            results["big"] = {
                "mib": round(size_mib, 1),
                "rounds": rounds,
                "ours_mib_per_s": round(size_mib / middle["ours_s"], 1),
                "bare_mib_per_s": round(size_mib / bare_s, 1),
                "bare_runs_s": middle["bare_runs_s"],
                "ratio": round(middle["ratio"], 3),
                "ratios": [round(r["ratio"], 3) for r in runs],
                "take_in_s": round(middle["take_in_s"], 2),
                "rss_growth_mib": round(max(r["rss_growth_mib"] for r in runs), 1),
                "download_mib_per_s": round(size_mib / fetched["seconds"], 1),
                "download_rss_growth_mib": round(
                    fetched["peak_rss_mib"] - fetched["rss_before_mib"], 1
                ),
            }
            big.unlink()
            before = bare_small(bare.base_url, smalls)
            floor = tus_floor(server.base_url, smalls)
            batched = batch_floor(server.base_url, smalls)
            figures = ours(tmp / "small.db", server.base_url, small_dir)
            after = bare_small(bare.base_url, smalls)
            bare_s = (before + after) / 2
            results["small"] = {
                "files": count,
                "ours_files_per_s": round(count / figures["seconds"]),
                "bare_files_per_s": round(count / bare_s),
                "bare_runs_s": [round(before, 2), round(after, 2)],
                "ratio": round(bare_s / figures["seconds"], 3),
                "tus_floor_files_per_s": round(count / floor),
                "floor_ratio": round(bare_s / floor, 3),
                "batch_floor_files_per_s": round(count / batched),
                "batch_floor_ratio": round(bare_s / batched, 3),
                "take_in_s": round(figures["take_in_s"], 2),
            }
    return results


def _met(ratio: float, target: float) -> str:
    return "met" if ratio >= target else "NOT met"


def _report(results: dict[str, Any]) -> None:
    big, small = results["big"], results["small"]
    print(
        f"one file of {big['mib']} MiB: ours {big['ours_mib_per_s']} MiB/s, bare PUT "
        f"{big['bare_mib_per_s']} MiB/s, ratio {big['ratio']} (target >= 0.8: "
        f"{_met(big['ratio'], 0.8)}; the median of {big['rounds']} rounds: "
        f"{', '.join(map(str, big['ratios']))}); take-in {big['take_in_s']} s; RSS grew at "
        f"most {big['rss_growth_mib']} MiB during an upload; the download "
        f"(open_attachment in a fresh store) {big['download_mib_per_s']} MiB/s, RSS grew "
        f"{big['download_rss_growth_mib']} MiB"
    )
    print(
        f"{small['files']} files of 20 KiB: ours {small['ours_files_per_s']} files/s, bare "
        f"{small['bare_files_per_s']} files/s, ratio {small['ratio']} (target >= 0.5: "
        f"{_met(small['ratio'], 0.5)}); take-in {small['take_in_s']} s; the server's floors "
        f"(bare clients): one tus POST with the body per file "
        f"{small['tus_floor_files_per_s']} files/s, ratio {small['floor_ratio']}; batches "
        f"of 200 {small['batch_floor_files_per_s']} files/s, ratio "
        f"{small['batch_floor_ratio']}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--bare-server"]:
        bare_server_main(args[1])
        return
    if args[:1] == ["--child"]:
        upload_child(args[1], args[2], args[3])
        return
    if args[:1] == ["--download-child"]:
        download_child(args[1], args[2], args[3])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 MiB and 1,000 files")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of the big file (3; 1 with --quick)"
    )
    options = parser.parse_args(args)
    if options.rounds is not None and options.rounds < 1:
        parser.error("--rounds must be at least 1")
    results = run(options.quick, options.rounds)
    _report(results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
