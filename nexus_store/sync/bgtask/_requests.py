"""BGTaskScheduler-like requests and their limits (pure, no I/O).

The request kinds mirror iOS's BackgroundTasks framework (statements BG-2, BG-15):
:class:`AppRefreshRequest` (short, no options), :class:`ProcessingRequest` (minutes,
optionally needs a network and/or external power, runs only while the device is idle) and
:class:`ContinuedProcessingRequest` (started from the foreground, identified by a wildcard
identifier, starts now or is queued). *When* a pending request launches is decided in
:mod:`._launch`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from ..._exceptions import InvalidWorkRequestError, TooManyPendingTaskRequestsError

__all__ = [
    "DEFAULT_EXPIRATION_LEAD",
    "DEFAULT_PROCESSING_BUDGET",
    "DEFAULT_REFRESH_BUDGET",
    "MAX_PENDING_APP_REFRESH",
    "MAX_PENDING_PROCESSING",
    "USAGE_WINDOW",
    "AppRefreshRequest",
    "BGTaskRequest",
    "ContinuedProcessingRequest",
    "ProcessingRequest",
    "RequestKind",
    "SubmissionStrategy",
    "check_pending_limits",
    "copy_request",
    "handler_key",
    "request_from_dict",
    "request_to_dict",
    "validate_identifiers",
    "validate_request",
]

MAX_PENDING_APP_REFRESH = 1
"""At most one pending app-refresh request (BG-3)."""
MAX_PENDING_PROCESSING = 10
"""At most ten pending processing requests (BG-3)."""
DEFAULT_REFRESH_BUDGET = 30.0
"""Seconds an app-refresh launch may run (BG-7; iOS: "up to 30 seconds")."""
DEFAULT_PROCESSING_BUDGET = 300.0
"""Seconds a processing launch may run (BG-7; iOS says "minutes", we assume five)."""
DEFAULT_EXPIRATION_LEAD = 5.0
"""How long before the end of the budget the expiration handler fires (BG-7)."""
USAGE_WINDOW = 24 * 3600.0
"""The window :class:`~._launch.AppUsage` counts launches over (the daily budget)."""
_MAX_IDENTIFIER = 255
_WILDCARD = ".*"


class RequestKind(StrEnum):
    """The kind of a background task request."""

    APP_REFRESH = "app_refresh"
    PROCESSING = "processing"
    CONTINUED_PROCESSING = "continued_processing"


class SubmissionStrategy(StrEnum):
    """What to do with a continued-processing request that cannot start now (BG-15)."""

    QUEUE = "queue"
    """Add it to the back of a queue; it starts when it can (the default)."""
    FAIL = "fail"
    """Refuse the submission with :class:`~nexus_store.ImmediateRunIneligibleError`."""


@dataclass
class AppRefreshRequest:
    """A short task to refresh content (BG-2). It has no options.

    Args:
        identifier: a declared task identifier.
        earliest_begin: the launch never happens before this time (BG-5); ``None``: no delay.
    """

    kind: ClassVar[RequestKind] = RequestKind.APP_REFRESH

    identifier: str
    earliest_begin: float | None = None


@dataclass
class ProcessingRequest:
    """A task that may take minutes; it runs only while the device is idle (BG-2, BG-9).

    Args:
        identifier: a declared task identifier.
        earliest_begin: the launch never happens before this time (BG-5); ``None``: no delay.
        requires_network: launch only while the device has a network connection.
        requires_external_power: launch only while the device is on external power.
    """

    kind: ClassVar[RequestKind] = RequestKind.PROCESSING

    identifier: str
    earliest_begin: float | None = None
    requires_network: bool = False
    requires_external_power: bool = False


@dataclass
class ContinuedProcessingRequest:
    """Work started in the foreground that may continue in the background (BG-15).

    Its identifier must fall under a declared wildcard identifier (``"app.export.*"``
    declared, ``"app.export.job-42"`` submitted). It starts at once, or is queued (or refused,
    with ``strategy=FAIL``) when it cannot; ``earliest_begin`` is ignored, as on iOS.

    Args:
        identifier: a concrete identifier under a declared wildcard identifier.
        title: shown to the user while the task runs.
        subtitle: shown under the title.
        strategy: queue (default) or fail when the task cannot start now.
        earliest_begin: accepted and ignored.
    """

    kind: ClassVar[RequestKind] = RequestKind.CONTINUED_PROCESSING

    identifier: str
    title: str = ""
    subtitle: str = ""
    strategy: SubmissionStrategy = SubmissionStrategy.QUEUE
    earliest_begin: float | None = field(default=None)

    def __post_init__(self) -> None:
        # Accept the strategy's value too (requests are read back from JSON).
        self.strategy = SubmissionStrategy(self.strategy)


BGTaskRequest: TypeAlias = AppRefreshRequest | ProcessingRequest | ContinuedProcessingRequest
"""Any background task request."""
_KINDS: Mapping[RequestKind, type[BGTaskRequest]] = {
    RequestKind.APP_REFRESH: AppRefreshRequest,
    RequestKind.PROCESSING: ProcessingRequest,
    RequestKind.CONTINUED_PROCESSING: ContinuedProcessingRequest,
}


def copy_request(request: BGTaskRequest) -> BGTaskRequest:
    """A copy of ``request`` whose mutation does not affect the original (BG-11)."""
    return dataclasses.replace(request)


def request_to_dict(request: BGTaskRequest) -> dict[str, Any]:
    """The request as plain data (``kind`` included), for storage."""
    return {"kind": request.kind.value, **dataclasses.asdict(request)}


def request_from_dict(data: Mapping[str, Any]) -> BGTaskRequest:
    """Rebuild a request from :func:`request_to_dict` output.

    Raises:
        InvalidWorkRequestError: unknown kind or fields.
    """
    body = dict(data)
    try:
        cls = _KINDS[RequestKind(body.pop("kind"))]
        request = cls(**body)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidWorkRequestError(f"not a stored BGTask request: {data!r}") from exc
    validate_request(request)
    return request


def validate_request(request: object) -> BGTaskRequest:
    """Check a request's types and values (it may have been mutated since it was built).

    Raises:
        InvalidWorkRequestError: the request cannot be submitted as it is.
    """
    if not isinstance(request, AppRefreshRequest | ProcessingRequest | ContinuedProcessingRequest):
        raise InvalidWorkRequestError(f"not a BGTask request: {request!r}")
    ident = request.identifier
    if not isinstance(ident, str) or not ident or len(ident) > _MAX_IDENTIFIER:
        raise InvalidWorkRequestError(f"identifier must be a non-empty string, got {ident!r}")
    begin = request.earliest_begin
    if begin is not None and (
        isinstance(begin, bool) or not isinstance(begin, int | float) or not math.isfinite(begin)
    ):
        raise InvalidWorkRequestError(
            f"earliest_begin must be None or clock seconds, got {begin!r}"
        )
    if isinstance(request, ProcessingRequest):
        for name in ("requires_network", "requires_external_power"):
            if not isinstance(getattr(request, name), bool):
                raise InvalidWorkRequestError(f"{name} must be a bool")
    if isinstance(request, ContinuedProcessingRequest):
        if not isinstance(request.title, str) or not isinstance(request.subtitle, str):
            raise InvalidWorkRequestError("title and subtitle must be strings")
        if not isinstance(request.strategy, SubmissionStrategy):
            raise InvalidWorkRequestError(
                f"strategy must be a SubmissionStrategy, got {request.strategy!r}"
            )
    return request


def validate_identifiers(identifiers: Iterable[str]) -> frozenset[str]:
    """Check the declared identifiers (BG-1); wildcards end in ``.*`` after a prefix.

    Raises:
        InvalidWorkRequestError: an identifier is empty, too long or a bare wildcard.
    """
    declared = frozenset(identifiers)
    for ident in declared:
        if not isinstance(ident, str) or not ident or len(ident) > _MAX_IDENTIFIER:
            raise InvalidWorkRequestError(f"task identifier {ident!r} is not a non-empty string")
        if ident.endswith(_WILDCARD) and len(ident) == len(_WILDCARD):
            raise InvalidWorkRequestError("a wildcard identifier needs a prefix, like 'app.job.*'")
    return declared


def handler_key(declared: Collection[str], request: BGTaskRequest) -> str | None:
    """The declared identifier a request runs under, or None if it is not permitted (BG-1).

    App-refresh and processing requests need their exact identifier declared;
    continued-processing requests need a declared wildcard ``prefix.*`` that their
    identifier extends (BG-15).
    """
    ident = request.identifier
    if request.kind is not RequestKind.CONTINUED_PROCESSING:
        if ident in declared and not ident.endswith(_WILDCARD):
            return ident
        return None
    for pattern in declared:
        if pattern.endswith(_WILDCARD):
            prefix = pattern[: -len(_WILDCARD) + 1]  # keep the dot: "app.job."
            if ident.startswith(prefix) and len(ident) > len(prefix) and ident != pattern:
                return pattern
    return None


def check_pending_limits(pending: Iterable[BGTaskRequest], new: BGTaskRequest) -> None:
    """Refuse ``new`` if it would exceed the pending limits (BG-3).

    A request replacing a pending one with the same identifier (BG-4) does not count twice.
    Continued-processing requests have no limit here (they queue, BG-15).

    Raises:
        TooManyPendingTaskRequestsError: one app refresh or ten processing requests pending.
    """
    limits = {
        RequestKind.APP_REFRESH: MAX_PENDING_APP_REFRESH,
        RequestKind.PROCESSING: MAX_PENDING_PROCESSING,
    }
    limit = limits.get(new.kind)
    if limit is None:
        return
    same_kind = sum(1 for p in pending if p.kind is new.kind and p.identifier != new.identifier)
    if same_kind + 1 > limit:
        raise TooManyPendingTaskRequestsError(
            f"{same_kind} {new.kind.value} request(s) already pending (limit {limit}): "
            "cancel some before submitting another"
        )
