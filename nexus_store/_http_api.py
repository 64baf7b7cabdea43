"""The shape of the sync server's HTTP API, shared by ``HttpBackend`` and the server.

Kept free of Starlette and httpx so the client and the server agree on one definition
of paths, media types and bodies without either importing the other's stack.

Endpoints (all but ``/health`` and ``/openapi.json`` need ``Authorization: Bearer ...``):

- ``POST /v1/push``: body :class:`PushRequest` (msgpack or JSON by ``Content-Type``);
  answers a :class:`~nexus_store.backends.PushResult` in the request's format. The
  optional header ``Nexus-Writer`` names the writer (a sync run's id, a positive 63-bit
  integer), recorded with what the batch writes.
- ``GET /v1/pull?cursor=N&limit=N&collections=a&collections=b&skip_writer=W``: answers
  :class:`~nexus_store.backends.Changes` (msgpack if ``Accept`` asks for it, else JSON);
  with ``skip_writer``, items whose latest state that writer made are left out and the
  cursor of a page that is not full moves to the tenant's head (echo suppression).
- ``GET /v1/events``: a server-sent-events stream of :class:`HeadEvent` for the tenant.
- ``GET /health``: :class:`Health`.

Every answer (errors and event streams included) carries the server's clock: the header
``Nexus-Clock`` holds its wall time in milliseconds since the epoch when it answered, and
``Nexus-Clock-Bound`` its bound on clock offsets in milliseconds (ops stamped further
ahead of its clock are re-stamped; a client whose clock is further off follows the
server's time).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._remote import RemoteOp

__all__ = [
    "API_PREFIX",
    "CLOCK_BOUND_HEADER",
    "CLOCK_HEADER",
    "EVENTS_PATH",
    "HEALTH_PATH",
    "JSON",
    "MSGPACK",
    "MSGPACK_ALIASES",
    "OPENAPI_PATH",
    "PULL_PATH",
    "PUSH_PATH",
    "SKIP_WRITER_PARAM",
    "WRITER_HEADER",
    "ErrorBody",
    "HeadEvent",
    "Health",
    "LimitsInfo",
    "PushRequest",
    "is_loopback_host",
    "media_type_of",
    "parse_clock_header",
]

API_PREFIX = "/v1"
PUSH_PATH = f"{API_PREFIX}/push"
PULL_PATH = f"{API_PREFIX}/pull"
EVENTS_PATH = f"{API_PREFIX}/events"
HEALTH_PATH = "/health"
OPENAPI_PATH = "/openapi.json"

MSGPACK = "application/msgpack"
JSON = "application/json"
MSGPACK_ALIASES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
"""Content types read as msgpack (the registered name and two common older ones)."""


WRITER_HEADER = "nexus-writer"
"""Request header of a push: the writer (a sync run's id) to record with its changes."""
SKIP_WRITER_PARAM = "skip_writer"
"""Query parameter of a pull: leave out changes whose latest state this writer made."""

CLOCK_HEADER = "nexus-clock"
"""Response header: the server's wall time when it answered, in ms since the epoch."""
CLOCK_BOUND_HEADER = "nexus-clock-bound"
"""Response header: the server's bound on clock offsets, in milliseconds."""
_MAX_CLOCK_DIGITS = 15  # about 31,700 years in milliseconds


def parse_clock_header(value: str | None) -> int | None:
    """The milliseconds a clock header holds (``None``: absent, or not plain ASCII digits)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_CLOCK_DIGITS:
        return None
    return int(text)


def media_type_of(content_type: str | None) -> Literal["msgpack", "json"] | None:
    """Which body format a ``Content-Type`` header names (``None``: neither).

    Parameters such as ``; charset=utf-8`` are ignored; ``+json`` suffixes count as JSON.
    """
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    if base in MSGPACK_ALIASES:
        return "msgpack"
    if base == JSON or base.endswith("+json"):
        return "json"
    return None


class PushRequest(BaseModel):
    """The body of ``POST /v1/push``: a batch of ops, applied in order."""

    model_config = ConfigDict(extra="forbid")

    ops: list[RemoteOp]


class ErrorBody(BaseModel):
    """The JSON body of every error response."""

    error: str = Field(description="A short machine-readable code, e.g. 'rate_limited'.")
    detail: str = Field(description="What went wrong, for people.")


class HeadEvent(BaseModel):
    """The data of a server-sent event: the tenant's latest change sequence."""

    head: int = Field(ge=0)


class LimitsInfo(BaseModel):
    """The limits a server enforces, published so clients can size their batches."""

    max_body_bytes: int
    max_batch_ops: int
    max_pull_limit: int


class Health(BaseModel):
    """The body of ``GET /health``."""

    status: Literal["ok", "unavailable"]
    version: str
    limits: LimitsInfo


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) names this
    machine's loopback interface: traffic to it never crosses a network."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
