"""What an app holds of a file: an :class:`Attachment` reference, and an :class:`Upload`'s state.

An :class:`Attachment` is a pydantic model, so it can be a field of the app's own models
(``photo: Attachment | None = None``): it is stored, queued and pulled with the record,
and a record that refers to a blob is sent only after the blob is on the server.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._exceptions import ItemValidationError
from .._priority import SyncPriority

__all__ = ["Attachment", "Upload", "UploadState", "check_name"]

_MAX_NAME = 255
_MAX_TYPE = 255


def check_name(name: str | None, what: str = "name") -> str | None:
    """A file name or content type as metadata: text without control characters.

    A name is kept as the app gave it (``../../x`` stays that text); it is never used as
    a path, here or on the server.

    Raises:
        ItemValidationError: not a string, longer than 255 characters, or holding NUL or
            other control characters.
    """
    if name is None:
        return None
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
        raise ItemValidationError(f"a {what} is 1 to {_MAX_NAME} characters of text")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise ItemValidationError(f"a {what} may not hold control characters: {name[:40]!r}")
    return name


class Attachment(BaseModel):
    """A reference to a blob: what a model field holds to carry a file with its record.

    Blobs are content-addressed: two attachments with the same bytes share one blob,
    locally and on the server.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """The blob's SHA-256, as 64 lowercase hex digits (its name everywhere)."""
    size: int = Field(ge=0, strict=True)
    """The blob's length in bytes."""
    content_type: str | None = Field(default=None, max_length=_MAX_TYPE)
    name: str | None = Field(default=None, max_length=_MAX_NAME)
    """The name the app gave (metadata only: never a path)."""

    @field_validator("name", "content_type")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            raise ValueError("no control characters")
        return value


class UploadState(StrEnum):
    """Where a :meth:`~nexus_store.NexusStore.upload` is."""

    QUEUED = "queued"
    """Waiting (or being sent, or backing off after a failure)."""
    DONE = "done"
    """The destination has it."""
    DEAD = "dead"
    """Given up (dead-lettered with ``error``): retry or discard it."""
    CANCELLED = "cancelled"
    """Cancelled by the app before it was done."""


class Upload(BaseModel):
    """One upload, as :meth:`~nexus_store.NexusStore.uploads` lists it."""

    model_config = ConfigDict(frozen=True)

    upload_id: str
    name: str | None
    sha256: str
    size: int
    url: str | None
    """Where it goes: ``None`` for the store's sync server (as a blob), else the URL it is
    POSTed to."""
    tag: str | None
    state: UploadState
    priority: SyncPriority | None = None
    """The op's priority while it is queued."""
    attempts: int = 0
    """Failed attempts so far, while the upload is queued or dead (0 once done)."""
    sent: int = 0
    """Bytes the destination acknowledged so far (tus uploads resume from here)."""
    error: str | None = None
    created_at: datetime
    done_at: datetime | None = None
    op_id: str | None = None
    """The queue op carrying it while it is queued or dead."""
