"""Transfer ops in the sync queue: what one carries, and the keys they are queued under.

A transfer op lives in the queue collection ``nx_files`` under a key that makes the queue's
own rules do the right thing:

- ``up:<sha256>``: a blob to the sync server. One op per blob: attaching or uploading the
  same bytes again coalesces into the op already queued (with the more urgent priority).
- ``post:<upload id>``: a file POSTed to an HTTP endpoint (one op per upload).
- ``get:<sha256>``: a blob fetched from the sync server (prefetch).

The payload (msgpack via :mod:`nexus_store._codec`) is a :class:`TransferSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .. import _codec
from .._blob_api import is_sha256
from .._exceptions import CodecError
from ._policy import TransferConstraints

__all__ = ["TransferSpec", "decode_spec", "key_of"]

Kind = Literal["up", "post", "get"]


@dataclass(frozen=True)
class TransferSpec:
    """What one transfer op does."""

    kind: Kind
    sha256: str
    size: int
    content_type: str | None = None
    name: str | None = None
    url: str | None = None
    """For ``post``: where to."""
    field_name: str = "file"
    headers: dict[str, str] = field(default_factory=dict)
    upload_id: str | None = None
    """For ``post``: the upload it carries."""
    constraints: TransferConstraints = field(default_factory=TransferConstraints)

    @property
    def key(self) -> str:
        """The op's item id in the queue."""
        return key_of(self.kind, self.upload_id if self.kind == "post" else self.sha256)

    def encode(self) -> bytes:
        """The op's payload."""
        value: dict[str, Any] = {"k": self.kind, "sha256": self.sha256, "size": self.size}
        if self.content_type is not None:
            value["ct"] = self.content_type
        if self.name is not None:
            value["name"] = self.name
        if self.kind == "post":
            value.update(
                url=self.url, field=self.field_name, headers=self.headers, upload=self.upload_id
            )
        constraints = self.constraints.to_json()
        if constraints:
            value["c"] = constraints
        return _codec.encode(value)


def key_of(kind: Kind, name: str | None) -> str:
    """The queue item id of a transfer."""
    return f"{kind}:{name}"


def decode_spec(payload: bytes | None) -> TransferSpec:
    """A transfer op's payload, checked.

    Raises:
        ValueError: a payload that is not a transfer (a damaged or foreign op).
    """
    try:
        value = _codec.decode(payload or b"")
    except CodecError as exc:
        raise ValueError("the transfer's payload cannot be decoded") from exc
    if not isinstance(value, dict):
        raise ValueError("the transfer's payload is not a map")  # noqa: TRY004 - bad data
    kind = value.get("k")
    sha = value.get("sha256")
    size = value.get("size")
    if kind not in ("up", "post", "get") or not is_sha256(sha) or type(size) is not int:
        raise ValueError("the transfer's payload lacks its kind, hash or size")
    headers = value.get("headers") or {}
    if kind == "post" and (
        not isinstance(value.get("url"), str)
        or not isinstance(value.get("upload"), str)
        or not isinstance(headers, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise ValueError("the POST transfer's payload lacks its URL or upload id")
    assert isinstance(sha, str)
    return TransferSpec(
        kind=kind,
        sha256=sha,
        size=size,
        content_type=_text(value.get("ct")),
        name=_text(value.get("name")),
        url=value.get("url"),
        field_name=str(value.get("field") or "file"),
        headers=dict(headers),
        upload_id=value.get("upload"),
        constraints=TransferConstraints.from_json(value.get("c")),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
