"""``nexus-store worker install|uninstall|status``: the worker as a service of the OS.

``install`` registers ``nexus-store worker --db ... --remote ...`` with the operating
system's own service manager, so it starts at login and restarts after a crash:

- Linux: a systemd user unit (``~/.config/systemd/user/nexus-store-worker-NAME.service``,
  ``Restart=on-failure``, ``WantedBy=default.target``), enabled and started with
  ``systemctl --user``;
- macOS: a launchd agent (``~/Library/LaunchAgents/io.nexus-store.worker.NAME.plist``,
  ``RunAtLoad``, ``KeepAlive`` unless it exited cleanly), loaded with ``launchctl``;
- Windows: a Task Scheduler task (``schtasks /Create /XML``: a logon trigger, restart on
  failure, no time limit).

**The token never goes into the unit file or the process list.** It goes to the OS
keyring (``keyring``: macOS Keychain, Windows Credential Locker, the Secret Service) where
one works; the service then runs with ``--token-keyring NAME``. Otherwise it is written to
a file only the user can read (0600, under ``~/.config/nexus-store/credentials/``), which
systemd hands to the service as a credential (``LoadCredential=``; the worker reads
``$CREDENTIALS_DIRECTORY/token`` through ``--token-file``). The generators are pure
functions (:func:`systemd_unit`, :func:`launchd_plist`, :func:`task_xml`) of a
:class:`ServiceSpec`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from xml.sax.saxutils import escape

import typer

from ._errors import fail
from ._worker import worker_app

__all__ = ["ServiceSpec", "launchd_plist", "read_token", "systemd_unit", "task_xml"]

KEYRING_SERVICE = "nexus-store"
TOKEN_CREDENTIAL = "token"  # noqa: S105 - the credential's name, not a secret


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """What the OS is asked to run."""

    name: str
    """A short name, unique per store file (derived from its path)."""
    db: Path
    remote: str
    python: str
    token_keyring: str | None = None
    """The keyring entry holding the token (``None``: a credentials file)."""
    token_file: Path | None = None
    """The 0600 file holding the token, when no keyring works."""
    extra: tuple[str, ...] = ()

    def arguments(self, *, token_file: str | None = None) -> list[str]:
        """The worker's command line (references to the token, never the token)."""
        args = [self.python, "-m", "nexus_store", "worker", "--db", str(self.db)]
        args += ["--remote", self.remote, *self.extra]
        if self.token_keyring is not None:
            args += ["--token-keyring", self.token_keyring]
        elif token_file is not None:
            args += ["--token-file", token_file]
        return args


def service_name(db: Path) -> str:
    """A stable short name for a store file: its stem and a hash of its full path."""
    digest = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in db.stem)[:32] or "store"
    return f"{stem}-{digest}"


def systemd_unit(spec: ServiceSpec) -> str:
    """A systemd user unit (systemd.service(5), systemd.exec(5) ``LoadCredential=``)."""
    lines = [
        "[Unit]",
        f"Description=nexus-store worker for {spec.db}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
    ]
    token_file = None
    if spec.token_keyring is None and spec.token_file is not None:
        lines.append(f"LoadCredential={TOKEN_CREDENTIAL}:{spec.token_file}")
        token_file = f"%d/{TOKEN_CREDENTIAL}"
    command = " ".join(shlex.quote(arg) for arg in spec.arguments(token_file=token_file))
    lines += [
        f"ExecStart={command}",
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def launchd_plist(spec: ServiceSpec, log_folder: Path) -> bytes:
    """A launchd agent (launchd.plist(5)): runs at login, restarted unless it exited cleanly."""
    return plistlib.dumps(
        {
            "Label": f"io.nexus-store.worker.{spec.name}",
            "ProgramArguments": spec.arguments(),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            "ThrottleInterval": 5,
            "StandardOutPath": str(log_folder / f"{spec.name}.log"),
            "StandardErrorPath": str(log_folder / f"{spec.name}.log"),
        }
    )


def task_xml(spec: ServiceSpec) -> str:
    """A Task Scheduler task (the Task Scheduler schema, version 1.2): at logon, restarted
    on failure every minute (up to 999 times), no execution time limit."""
    program, *args = spec.arguments()
    arguments = subprocess.list2cmdline(args)
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>nexus-store worker for {escape(str(spec.db))}</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
    <Enabled>true</Enabled>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(program)}</Command>
      <Arguments>{escape(arguments)}</Arguments>
    </Exec>
  </Actions>
</Task>
"""


# -- the token ------------------------------------------------------------------------------


def _keyring_usable() -> bool:
    try:
        import keyring  # noqa: PLC0415 - the optional keyring extra
        from keyring.backends import fail as failing  # noqa: PLC0415
    except ImportError:
        return False
    backend = keyring.get_keyring()
    return not isinstance(backend, failing.Keyring) and getattr(backend, "priority", 0) > 0


def store_token(name: str, token: str, folder: Path) -> tuple[str | None, Path | None]:
    """Put the token in the keyring, or in a 0600 file; return (keyring name, file)."""
    if _keyring_usable():
        import keyring  # noqa: PLC0415

        keyring.set_password(KEYRING_SERVICE, name, token)
        return name, None
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{name}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token)
    os.chmod(path, 0o600)  # an existing file keeps its mode on open
    return None, path


def read_token(token_file: Path | None, token_keyring: str | None) -> str:
    """The token from a file or the keyring (what ``--token-file``/``--token-keyring`` name).

    Raises:
        ValueError: nothing there.
    """
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the token file {token_file}: {exc}") from exc
        if not token:
            raise ValueError(f"the token file {token_file} is empty")
        return token
    assert token_keyring is not None
    try:
        import keyring  # noqa: PLC0415
    except ImportError as exc:
        raise ValueError(
            "--token-keyring needs the keyring package (nexus-store[keyring])"
        ) from exc
    found = keyring.get_password(KEYRING_SERVICE, token_keyring)
    if not found:
        raise ValueError(f"no token in the keyring under {KEYRING_SERVICE}/{token_keyring}")
    return found


# -- the commands ---------------------------------------------------------------------------


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def _unit_path(name: str) -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "LaunchAgents" / f"io.nexus-store.worker.{name}.plist"
    if sys.platform == "win32":
        return _config_home() / "nexus-store" / f"{name}.xml"
    return _config_home() / "systemd" / "user" / f"nexus-store-worker-{name}.service"


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    # The service manager's own command with arguments made here (no shell).
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


@worker_app.command("install")
def install(
    db: Annotated[Path, typer.Option("--db", help="The store's database file.")],
    remote: Annotated[str, typer.Option(help="The sync server's base URL.")],
    token: Annotated[
        str | None,
        typer.Option(
            envvar="NEXUS_STORE_TOKEN",
            help="The bearer token (kept in the keyring or a 0600 file, never in the unit file).",
            show_default=False,
        ),
    ] = None,
    start: Annotated[bool, typer.Option(help="Enable and start it now.")] = True,
) -> None:
    """Register the worker with the OS's service manager (runs at login, restarts on crash)."""
    if not db.is_file():
        fail("worker install", f"no such file: {db}")
    db = db.resolve()
    name = service_name(db)
    keyring_name, token_path = (None, None)
    if token:
        keyring_name, token_path = store_token(
            name, token, _config_home() / "nexus-store" / "credentials"
        )
    spec = ServiceSpec(name, db, remote, sys.executable, keyring_name, token_path)
    path = _unit_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sys.platform == "darwin":
        logs = Path.home() / "Library" / "Logs" / "nexus-store"
        logs.mkdir(parents=True, exist_ok=True)
        path.write_bytes(launchd_plist(spec, logs))
        commands = [["launchctl", "load", "-w", str(path)]]
    elif sys.platform == "win32":
        path.write_text(task_xml(spec), encoding="utf-16")
        task = f"nexus-store-worker-{name}"
        commands = [
            ["schtasks", "/Create", "/TN", task, "/XML", str(path), "/F"],
            ["schtasks", "/Run", "/TN", task],
        ]
    else:
        path.write_text(systemd_unit(spec))
        commands = [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", path.name],
        ]
    typer.echo(f"wrote {path}")
    typer.echo(
        "token: "
        + (
            f"in the OS keyring ({KEYRING_SERVICE}/{keyring_name})"
            if keyring_name
            else f"in {token_path} (mode 0600)"
            if token_path
            else "none given"
        )
    )
    if not start:
        return
    for command in commands:
        done = _run(command) if shutil.which(command[0]) else None
        if done is None or done.returncode != 0:
            why = "not found" if done is None else (done.stderr or done.stdout).strip()
            typer.echo(f"{' '.join(command)}: {why}", err=True)
            typer.echo(
                "the service file is written; start it once the service manager runs", err=True
            )
            raise typer.Exit(1)
    typer.echo("started; it runs at login and restarts after a crash")


@worker_app.command("uninstall")
def uninstall(db: Annotated[Path, typer.Option("--db", help="The store's database file.")]) -> None:
    """Stop the worker's service, remove it and its stored token."""
    name = service_name(db)
    path = _unit_path(name)
    if sys.platform == "darwin":
        commands = [["launchctl", "unload", "-w", str(path)]]
    elif sys.platform == "win32":
        commands = [["schtasks", "/Delete", "/TN", f"nexus-store-worker-{name}", "/F"]]
    else:
        commands = [["systemctl", "--user", "disable", "--now", path.name]]
    for command in commands:
        if shutil.which(command[0]):
            _run(command)
    path.unlink(missing_ok=True)
    (_config_home() / "nexus-store" / "credentials" / f"{name}.token").unlink(missing_ok=True)
    if _keyring_usable():
        import keyring  # noqa: PLC0415
        from keyring.errors import PasswordDeleteError  # noqa: PLC0415

        with contextlib.suppress(PasswordDeleteError):
            keyring.delete_password(KEYRING_SERVICE, name)
    typer.echo(f"removed {path}")


@worker_app.command("status")
def status(db: Annotated[Path, typer.Option("--db", help="The store's database file.")]) -> None:
    """Say whether the worker's service is installed and running."""
    name = service_name(db)
    path = _unit_path(name)
    if not path.exists():
        typer.echo(f"not installed (no {path})")
        raise typer.Exit(1)
    if sys.platform == "darwin":
        command = ["launchctl", "list", f"io.nexus-store.worker.{name}"]
    elif sys.platform == "win32":
        command = ["schtasks", "/Query", "/TN", f"nexus-store-worker-{name}"]
    else:
        command = ["systemctl", "--user", "is-active", path.name]
    done = _run(command) if shutil.which(command[0]) else None
    state = "unknown (no service manager answered)" if done is None else done.stdout.strip()
    typer.echo(f"installed: {path}; state: {state or done.stderr.strip() if done else state}")
