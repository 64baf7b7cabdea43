"""Log output for long-running commands: text lines or one JSON object per line.

``--log-format text`` prints ``2026-01-02T03:04:05.678Z nexus-store worker: message``;
``--log-format json`` prints ``{"time": ..., "level": ..., "logger": ..., "message": ...}``
plus the record's structured fields (``extra={"fields": {...}}``), for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum

__all__ = ["LogFormat", "LogLevel", "configure_logging", "iso_time"]


class LogLevel(StrEnum):
    """The ``--log-level`` values."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    """The ``--log-format`` values."""

    TEXT = "text"
    JSON = "json"


def iso_time(seconds: float) -> str:
    """Wall-clock seconds as an ISO 8601 UTC time with milliseconds."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _TextFormatter(logging.Formatter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        line = f"{iso_time(record.created)} {self._prefix}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(prefix: str, level: LogLevel, fmt: LogFormat) -> None:
    """Send the package's logs (and the command's own lines) to stdout, one per line.

    Args:
        prefix: the command, e.g. ``"nexus-store worker"`` (text lines start with it).
        level: the least severe level shown.
        fmt: text lines or JSON objects.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonFormatter() if fmt is LogFormat.JSON else _TextFormatter(prefix))
    root = logging.getLogger("nexus_store")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
