"""A real ``nexus-store serve`` process on 127.0.0.1, for tests and benchmarks.

:class:`ServerProcess` starts the server as a subprocess on a free port (the server
announces the port it bound, so there is no race for it), waits until ``/health``
answers, and stops it with SIGTERM (SIGKILL if it does not exit in time). Credentials
and the storage URL travel through environment variables, never the command line.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

__all__ = ["ServerProcess", "ServerStartError"]

_ANNOUNCE_PREFIX = "nexus-store serve: listening on "  # see nexus_store.server._run
_LAUNCHER = "from nexus_store.cli import main; main()"


class ServerStartError(RuntimeError):
    """The server process did not come up (its log is in the message)."""


class ServerProcess:
    """``nexus-store serve`` in a subprocess on 127.0.0.1.

    Args:
        database: the storage URL (``sqlite:///...``, ``postgresql://...``, ``memory://``).
        tokens: development tokens, ``{token: tenant}``.
        secret: signing secret for signed tokens.
        max_body: the body limit, e.g. ``"64k"``.
        max_batch: the most ops per push.
        rate: the per-tenant rate limit, e.g. ``"5/s"``.
        burst: the rate limit's burst.
        events_interval: seconds between head checks for event streams.
        conflict_policy: ``"lww"``, ``"server_wins"`` or ``"module:function"`` (a resolver
            the server process can import; see ``env`` for its ``PYTHONPATH``).
        max_clock_offset: seconds a write's stamp may be ahead of the server's clock.
        port: the port to listen on (0: a free one; a fixed one lets a restarted server
            come back where its clients and proxies expect it).
        args: more command-line arguments for ``nexus-store serve``.
        env: more environment variables for the process.
        startup_timeout: seconds to wait for the server to answer ``/health``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        database: str = "memory://",
        *,
        tokens: Mapping[str, str] | None = None,
        secret: str | None = None,
        max_body: str | int | None = None,
        max_batch: int | None = None,
        rate: str | None = None,
        burst: int | None = None,
        events_interval: float | None = None,
        conflict_policy: str | None = None,
        max_clock_offset: float | None = None,
        port: int = 0,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.database = database
        self._tokens = dict(tokens or {})
        self._secret = secret
        self._args = ["--host", "127.0.0.1", "--port", str(port)]
        for flag, value in (
            ("--max-body", max_body),
            ("--max-batch", max_batch),
            ("--rate", rate),
            ("--burst", burst),
            ("--events-interval", events_interval),
            ("--conflict-policy", conflict_policy),
            ("--max-clock-offset", max_clock_offset),
        ):
            if value is not None:
                self._args += [flag, str(value)]
        self._args += list(args)
        self._env = dict(env or {})
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._log_file: IO[str] | None = None
        self._base_url: str | None = None
        self._pump: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        if self._base_url is None:
            raise RuntimeError("the server is not running; call start()")
        return self._base_url

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self._process is None:
            raise RuntimeError("the server is not running; call start()")
        return self._process.pid

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        if self._log_file is None:
            return ""
        self._log_file.flush()
        return Path(self._log_file.name).read_text(errors="replace")

    def start(self) -> Self:
        """Start the process and wait until ``/health`` answers.

        Raises:
            ServerStartError: the process exited or did not answer in time.
        """
        if self._process is not None:
            raise RuntimeError("the server is already started")
        env = {**os.environ, **self._env, "NEXUS_STORE_DATABASE": self.database}
        if self._tokens:
            env["NEXUS_STORE_TOKENS"] = " ".join(f"{t}={n}" for t, n in self._tokens.items())
        if self._secret:
            env["NEXUS_STORE_SECRET"] = self._secret
        self._log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            "w+", prefix="nexus-store-serve-", suffix=".log", delete=False
        )
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and entry point
            [sys.executable, "-c", _LAUNCHER, "serve", *self._args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        try:
            self._base_url = self._read_address()
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_address(self) -> str:
        assert self._process is not None
        assert self._process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self._process.stdout

        def pump() -> None:
            # Keep draining stdout so the server never blocks on a full pipe; the pipe is
            # closed here, at its end of file, so no other thread closes it mid-read.
            with stdout:
                for line in stdout:
                    lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, name="nexus-store-serve-stdout", daemon=True)
        self._pump.start()
        deadline = time.monotonic() + self._startup_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise ServerStartError(f"nexus-store serve exited at startup:\n{self.log()}")
            if line.startswith(_ANNOUNCE_PREFIX):
                return line[len(_ANNOUNCE_PREFIX) :].strip()
        raise ServerStartError(f"nexus-store serve did not announce its port:\n{self.log()}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise ServerStartError(f"nexus-store serve exited at startup:\n{self.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/health").status_code == 200:
                        return
                time.sleep(0.02)  # bounded poll of a process we do not control
        raise ServerStartError(f"nexus-store serve did not become healthy:\n{self.log()}")

    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); idempotent.

        Returns:
            The process's exit code (``None`` if it was never started).
        """
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._pump is not None:
            self._pump.join(timeout)
            self._pump = None
        self._process = None
        self._base_url = None
        if self._log_file is not None:
            self._log_file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log_file.name)
            self._log_file = None
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the server (a crash), then clean up as :meth:`stop` does."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self._base_url or "not running"
        return f"ServerProcess({where})"
