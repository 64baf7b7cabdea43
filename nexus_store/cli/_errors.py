"""How the command line reports a failure: one line on stderr, an exit code, no traceback.

Exit codes: 0 success, 1 the command ran but something failed, 2 bad usage or input,
130 interrupted. A command reports what it knows with :func:`fail`; :func:`run_app`
turns the rest into one line too: usage errors (2), errors of the input a user gave, a
file that is not a store or cannot be opened, a database that cannot be reached (2),
other errors of ours (1). Only a bug shows a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

import typer

from .._exceptions import (
    AuthError,
    CodecError,
    NetworkError,
    NexusStoreError,
    QueueError,
    StoreError,
)

__all__ = ["BAD_INPUT", "fail", "run_app", "say_error"]

BAD_INPUT: tuple[type[BaseException], ...] = (StoreError, CodecError, QueueError)
"""Errors that mean the input cannot be used: exit code 2."""

_PROG = "nexus-store"


def say_error(command: str, message: str) -> None:
    """Print ``nexus-store COMMAND: MESSAGE`` on stderr, on one line."""
    text = " ".join(str(message).split())  # one line, whatever the message held
    sys.stderr.write(f"{_PROG} {command}: {text}\n" if command else f"{_PROG}: {text}\n")
    sys.stderr.flush()


def fail(command: str, message: str, code: int = 2) -> NoReturn:
    """Report a failure on one line and exit with ``code`` (2: bad input)."""
    say_error(command, message)
    raise typer.Exit(code)


def _command_of(args: Sequence[str]) -> str:
    return next((arg for arg in args if not arg.startswith("-")), "")


def run_app(app: typer.Typer, args: Sequence[str]) -> int:
    """Run the command line on ``args``; return the exit code (see the module notes)."""
    command = _command_of(args)
    try:
        code = typer.main.get_command(app).main(
            args=list(args), prog_name=_PROG, standalone_mode=False
        )
    except (typer.Abort, KeyboardInterrupt):
        say_error(command, "interrupted")
        return 130
    except BAD_INPUT as exc:
        say_error(command, str(exc))
        return 2
    except (NetworkError, AuthError) as exc:
        # Raised before a command could start its work: a database or server it was
        # pointed at cannot be reached or refused the credentials.
        say_error(command, str(exc))
        return 2
    except NexusStoreError as exc:
        say_error(command, f"{type(exc).__name__}: {exc}")
        return 1
    except Exception as exc:
        message, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if not callable(message) or not isinstance(code, int):
            raise  # not a usage error but a bug: its traceback is what a report needs
        # A usage error (click's, as vendored by typer or not): an unknown option, a bad value.
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())  # the command alone: its help
        else:
            say_error(command, str(message()))
        return code
    return code if isinstance(code, int) else 0
