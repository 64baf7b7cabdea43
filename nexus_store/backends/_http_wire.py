"""What ``HttpBackend`` sends and accepts, as pure functions: bodies, answers, errors.

Requests: ops encoded as msgpack (or JSON) with an idempotency key over their ids.
Answers: decoded and validated against the wire models, then checked to answer the ops
sent one for one and in order (:func:`check_push_result`) or to be a well-formed page
(:func:`check_changes`); anything else is a :class:`~nexus_store.ProtocolError`.
Statuses map to our exception tree (:func:`error_for_status`), ``Retry-After`` to
seconds (:func:`parse_retry_after`), the server's clock headers to a reading
(:func:`clock_reading`). Tested with plain inputs.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from .. import _codec
from .._exceptions import (
    AuthError,
    CodecError,
    PayloadTooLargeError,
    PermanentError,
    ProtocolError,
    RateLimitedError,
    RemoteError,
    ServerUnavailableError,
)
from .._hlc import ClockReading
from .._http_api import CLOCK_BOUND_HEADER, CLOCK_HEADER, media_type_of, parse_clock_header
from .._remote import (
    MAX_COLLECTION,
    MAX_HLC,
    MAX_INT,
    MAX_RETRY_AFTER,
    MIN_INT,
    Change,
    Changes,
    OpResult,
    OpStatus,
    PushResult,
    RemoteOp,
)
from .._trusted import trusted_builder

__all__ = [
    "UnsendableOpsError",
    "changes_of",
    "check_changes",
    "check_push_result",
    "clock_reading",
    "encode_ops",
    "error_for_status",
    "idempotency_key",
    "parse_retry_after",
    "push_result_of",
]

_M = TypeVar("_M", bound=BaseModel)
_OPS = TypeAdapter(list[RemoteOp])
_ERROR_BODY_BYTES = 8 * 1024
_MAX_DETAIL_CHARS = 200


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Args:
        value: the header value, if any.
        now: the current wall time (seconds since the epoch).

    Returns:
        The seconds (``0.0`` for a date in the past), or ``None`` if absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # str.isdigit also accepts "²" and other digits
        return float(text)
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < float("inf") else None  # also refuses NaN
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    return max(0.0, when.timestamp() - now)


def _detail(body: bytes, content_type: str | None) -> str:
    """A short, printable reason from an error body (the server's ``detail`` if JSON)."""
    text = body.decode("utf-8", "replace")
    if media_type_of(content_type) == "json":
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("detail"), str):
            text = parsed["detail"]
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text[:_MAX_DETAIL_CHARS] or "no detail"


def error_for_status(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float
) -> RemoteError | None:
    """The error a response status stands for (``None`` for 200).

    Args:
        status: the HTTP status.
        headers: the response headers (``retry-after``, ``content-type``).
        body: the (start of the) response body, for the message.
        now: wall time, to read an HTTP-date ``Retry-After``.
    """
    if status == 200:
        return None
    reason = _detail(body, headers.get("content-type"))
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    if retry_after is not None:
        retry_after = min(retry_after, MAX_RETRY_AFTER)
    if status in (401, 403):
        return AuthError(f"the server refused the credentials (HTTP {status}): {reason}")
    if status == 413:
        return PayloadTooLargeError(f"the server refused the request size (HTTP 413): {reason}")
    if status == 429:
        return RateLimitedError(f"rate limited (HTTP 429): {reason}", retry_after=retry_after)
    if 500 <= status <= 599:
        return ServerUnavailableError(
            f"the server failed (HTTP {status}): {reason}", retry_after=retry_after, status=status
        )
    if 400 <= status <= 499:
        return PermanentError(f"the server refused the request (HTTP {status}): {reason}")
    return ProtocolError(f"unexpected HTTP status {status}")


def clock_reading(
    headers: Mapping[str, str], *, sent: float, received: float
) -> ClockReading | None:
    """The server's clock as an answer's headers state it (``None``: not stated).

    Args:
        headers: the response headers (``Nexus-Clock``, ``Nexus-Clock-Bound``).
        sent: local wall time when the request was sent.
        received: local wall time when the answer arrived.
    """
    millis = parse_clock_header(headers.get(CLOCK_HEADER))
    if millis is None:
        return None
    bound = parse_clock_header(headers.get(CLOCK_BOUND_HEADER))
    return ClockReading(
        server_time=millis / 1000,
        local_time=(sent + received) / 2,
        max_offset=None if bound is None else bound / 1000,
    )


def idempotency_key(ops: Sequence[RemoteOp]) -> str:
    """The batch's ``Idempotency-Key``: a hash of its op ids, in order."""
    # Each id followed by a NUL, hashed in one call (the same bytes as one update per id).
    ids = "\x00".join([op.op_id for op in ops]) + "\x00"
    return hashlib.sha256(ids.encode("utf-8")).hexdigest()


class UnsendableOpsError(CodecError):
    """Some ops of a batch hold a value the wire format cannot carry (never sent).

    Attributes:
        refused: the position of each such op in the batch, with the reason.
    """

    def __init__(self, refused: Mapping[int, str]) -> None:
        super().__init__(f"{len(refused)} op(s) hold a value the wire format cannot carry")
        self.refused = dict(refused)


def encode_ops(ops: Sequence[RemoteOp], wire_format: Literal["msgpack", "json"]) -> bytes:
    """The body of a push: ``{"ops": [...]}`` in the wire format.

    Ops are sent as their fields, data as given, when the codec takes every value as it
    is (JSON-like data, what a store queues); otherwise (dates, sets, ...) through the
    model's JSON serialisation, as one call for the batch.

    Raises:
        UnsendableOpsError: JSON is the wire format and some ops hold an infinite or NaN
            number, which JSON has no way to write (the model's serialisation would turn it
            into ``null``: another value than the one saved).
        CodecError: the ops cannot be encoded at all.
    """
    # A RemoteOp keeps its field values in __dict__ (and nothing else: extra fields are
    # forbidden), which is exactly the op's wire form: no copy per op. A subclass may
    # hold more, so it goes through the model's serialisation.
    fields = [op.__dict__ for op in ops if type(op) is RemoteOp]
    if len(fields) == len(ops):
        try:
            return _encode_body({"ops": fields}, wire_format)
        except (CodecError, TypeError, ValueError):
            pass
    if wire_format == "json":
        refused = {
            position: f"the op holds {where}, which JSON cannot carry (msgpack, the default "
            "wire format, can)"
            for position, op in enumerate(ops)
            if (where := _non_finite(op.data)) is not None
        }
        if refused:
            raise UnsendableOpsError(refused)
    return _encode_body({"ops": _OPS.dump_python(list(ops), mode="json")}, wire_format)


def _non_finite(data: object) -> str | None:
    """Where ``data`` holds an infinite or NaN float (e.g. ``"inf at data.a[2]"``), if it
    does."""
    stack: list[tuple[object, str]] = [(data, "data")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return f"{value!r} at {path}"
        elif isinstance(value, Mapping):
            stack.extend((v, f"{path}.{k}") for k, v in value.items())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
    return None


def _encode_body(body: dict[str, Any], wire_format: Literal["msgpack", "json"]) -> bytes:
    if wire_format == "msgpack":
        return _codec.encode(body)
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def check_push_result(ops: Sequence[RemoteOp], result: PushResult) -> PushResult:
    """Check that ``result`` answers ``ops`` one for one, in order.

    A result carrying an item (the server's copy after a conflict or a merge) must carry
    the op's own item, or the client would overwrite another one with it.

    Raises:
        ProtocolError: a missing, extra, reordered or foreign op id, or a foreign item.
    """
    if len(result.results) != len(ops):
        raise ProtocolError(f"the server answered {len(result.results)} results for {len(ops)} ops")
    for position, (op, answer) in enumerate(zip(ops, result.results, strict=True)):
        if answer.op_id != op.op_id:
            raise ProtocolError(f"result {position} answers another op id than the one sent")
        item = answer.item
        if item is not None and (
            item.collection != op.collection
            or item.item_id != op.item_id
            or type(item.item_id) is not type(op.item_id)
        ):
            raise ProtocolError(f"result {position} carries another item than the op's")
    return result


_op_result = trusted_builder(
    OpResult,
    {
        "op_id": "o",
        "status": OpStatus.ACCEPTED,
        "version": 1,
        "item": None,
        "reason": None,
        "retry_after": None,
    },
)
_push_result = trusted_builder(PushResult, {"results": []})
_ACCEPTED = OpStatus.ACCEPTED


def push_result_of(ops: Sequence[RemoteOp], decoded: Any) -> PushResult:
    """The validated answer to a push of ``ops``, from its decoded body.

    The common answer (every op accepted, in order, with its version) is checked field by
    field and built without pydantic's validation, which cost more than the rest of the
    client's work per op; any other answer is validated in full (:func:`check_push_result`).

    Raises:
        ProtocolError: the body is not a valid answer to these ops.
    """
    raw = decoded.get("results") if type(decoded) is dict and len(decoded) == 1 else None
    if type(raw) is list and len(raw) == len(ops):
        built: list[OpResult] = []
        for op, answer in zip(ops, raw, strict=True):
            if (
                type(answer) is not dict
                or len(answer) != 3
                or answer.get("status") != "accepted"
                or answer.get("op_id") != op.op_id
                or type(version := answer.get("version")) is not int
                or not 1 <= version <= MAX_INT
            ):
                break
            built.append(
                _op_result(
                    {
                        "op_id": op.op_id,
                        "status": _ACCEPTED,
                        "version": version,
                        "item": None,
                        "reason": None,
                        "retry_after": None,
                    }
                )
            )
        else:
            return _push_result({"results": built})
    return check_push_result(ops, _validate(PushResult, decoded))


def check_changes(
    changes: Changes, *, cursor: int, limit: int, collections: Sequence[str] | None
) -> Changes:
    """Check that a page of changes is what was asked for.

    Every change must be after ``cursor`` and at most the page's new cursor, in strictly
    increasing order, within ``limit`` and ``collections``; a page that says there is
    more must move the cursor forward (or a client would ask for it forever).

    Raises:
        ProtocolError: the page breaks one of these rules.
    """
    if changes.cursor < cursor:
        raise ProtocolError(f"the server moved the cursor backwards ({cursor} -> {changes.cursor})")
    if len(changes.changes) > limit:
        raise ProtocolError(
            f"the server returned {len(changes.changes)} changes for a limit of {limit}"
        )
    previous = cursor
    wanted = set(collections) if collections is not None else None
    for change in changes.changes:
        if not previous < change.version <= changes.cursor:
            raise ProtocolError("the server returned changes out of order or beyond its cursor")
        if wanted is not None and change.collection not in wanted:
            raise ProtocolError("the server returned a change of a collection not asked for")
        previous = change.version
    if changes.has_more and changes.cursor == cursor:
        raise ProtocolError("the server says there is more but did not move the cursor")
    return changes


_change = trusted_builder(
    Change,
    {
        "collection": "c",
        "item_id": "i",
        "version": 1,
        "deleted": False,
        "data": {"k": 1},
        "hlc": "h",
    },
)
_changes = trusted_builder(Changes, {"changes": [], "cursor": 0, "has_more": False})
_CHANGE_FIELDS = frozenset(Change.model_fields)
_CHANGE_ORDER = tuple(Change.model_fields)
_CHANGES_FIELDS = frozenset(Changes.model_fields)


def changes_of(decoded: Any, *, from_msgpack: bool) -> Changes:
    """The validated page of changes a decoded pull answer holds.

    From msgpack (whose strings are valid UTF-8 once decoded), a page whose fields are
    all exactly of the wire types (what ``nexus-store serve`` sends: strings, integers,
    bools, maps with string keys) is checked field by field and built without pydantic's
    validation, which cost more than the rest of the client's work per change. Any other
    answer is validated in full (JSON text may hold lone surrogates, which the models
    refuse).

    Raises:
        ProtocolError: the body is not a valid page of changes.
    """
    if (
        from_msgpack
        and type(decoded) is dict
        and _CHANGES_FIELDS.issuperset(decoded)
        and type(raw := decoded.get("changes")) is list
        and type(cursor := decoded.get("cursor")) is int
        and 0 <= cursor <= MAX_INT
        and type(has_more := decoded.get("has_more", False)) is bool
    ):
        built = _plain_changes(raw)
        if built is not None:
            return _changes({"changes": built, "cursor": cursor, "has_more": has_more})
    return _validate(Changes, decoded)


def _plain_changes(raw: list[Any]) -> list[Change] | None:
    """The changes, built unvalidated, if every one is of exactly the wire types.

    A change whose keys are every field in the model's order (what ``nexus-store serve``
    sends for all but tombstones) becomes the record's field dict as it is; any other is
    copied field by field. The checks are the same either way.
    """
    built: list[Change] = []
    append = built.append
    fields = _CHANGE_FIELDS
    order = _CHANGE_ORDER
    for change in raw:
        if type(change) is not dict:
            return None
        if len(change) == len(order) and tuple(change) == order:
            values: dict[str, Any] | None = change
            collection, item_id, version, deleted, data, hlc = change.values()
        elif fields.issuperset(change):
            values = None
            collection = change.get("collection")
            item_id = change.get("item_id")
            version = change.get("version")
            deleted = change.get("deleted", False)
            data = change.get("data")
            hlc = change.get("hlc", "")
        else:
            return None
        if (
            type(collection) is not str
            or not 0 < len(collection) <= MAX_COLLECTION
            or type(version) is not int
            or not 1 <= version <= MAX_INT
            or type(deleted) is not bool
            or type(hlc) is not str
            or len(hlc) > MAX_HLC
            or (type(item_id) is not str and type(item_id) is not int)
            or (type(item_id) is int and not MIN_INT <= item_id <= MAX_INT)
        ):
            return None
        if data is not None:
            if type(data) is not dict:
                return None
            for key in data:
                if type(key) is not str:
                    return None
        append(
            _change(
                values
                if values is not None
                else {
                    "collection": collection,
                    "item_id": item_id,
                    "version": version,
                    "deleted": deleted,
                    "data": data,
                    "hlc": hlc,
                }
            )
        )
    return built


class _OversizedResponseError(ProtocolError):
    """A response body over ``max_response_bytes`` (a pull retries with a smaller page)."""


def _decode(body: bytes, content_type: str | None) -> Any:
    fmt = media_type_of(content_type)
    if fmt == "msgpack":
        try:
            return _codec.decode(body)
        except CodecError as exc:
            raise ProtocolError(f"the response is not valid msgpack: {exc}") from exc
    if fmt == "json":
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("the response is not valid JSON") from exc
    raise ProtocolError(f"the response has an unexpected content type {content_type!r}")


def _validate(model: type[_M], value: Any) -> _M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ProtocolError(
            f"the response is not a valid {model.__name__} ({where}: {first['msg']})"
        ) from exc
