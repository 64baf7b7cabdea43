"""Sending a file to any HTTP endpoint as a multipart form POST (``store.upload(url=...)``).

The body is streamed from the local copy (never held in memory) with a ``Content-Length``,
as one form field (``field_name``) carrying the file with its name and type. The file is
hashed as it is sent and checked against the hash taken at enqueue: a copy that changed
is reported (:class:`~nexus_store.SourceChangedError`) rather than counted as sent.

Answers: 2xx is done; 408, 425, 429 and 5xx are worth retrying (``Retry-After``
honoured); any other status is refused for good (the op is dead-lettered with it).
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import anyio.to_thread
import httpx

from .._exceptions import (
    NetworkError,
    PermanentError,
    RateLimitedError,
    RemoteError,
    ServerUnavailableError,
    SourceChangedError,
)

__all__ = ["post_file", "safe_filename"]

_PIECE = 256 * 1024
_RETRYABLE = frozenset({408, 425, 429})


def safe_filename(name: str | None, fallback: str) -> str:
    """A name fit for a ``Content-Disposition`` header: no path, quotes or control
    characters, NFKC-normalised (look-alike slashes become slashes, then go)."""
    text = unicodedata.normalize("NFKC", name or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if ch.isprintable() and ch not in '"\r\n;')
    text = text.strip(". ")
    return text[:200] or fallback


async def post_file(
    client: httpx.AsyncClient,
    url: str,
    path: Path,
    *,
    sha256: str,
    size: int,
    field_name: str,
    filename: str | None,
    content_type: str | None,
    headers: Mapping[str, str],
    progress: Callable[[int], None],
) -> None:
    """POST the file at ``path`` to ``url`` as ``multipart/form-data``.

    Raises:
        SourceChangedError: the local copy no longer hashes to ``sha256``.
        RemoteError: the endpoint failed or refused (retryable or permanent).
    """
    boundary = uuid.uuid4().hex
    name = safe_filename(filename, sha256[:16])
    field = safe_filename(field_name, "file")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        f"Content-Type: {content_type or 'application/octet-stream'}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sha = hashlib.sha256()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield head
        handle = await anyio.to_thread.run_sync(path.open, "rb")
        try:
            while True:
                piece = await anyio.to_thread.run_sync(handle.read, _PIECE)
                if not piece:
                    break
                sha.update(piece)
                sent += len(piece)
                yield piece
                progress(sent)
        finally:
            await anyio.to_thread.run_sync(handle.close)
        yield tail

    all_headers = {
        **headers,
        "content-type": f"multipart/form-data; boundary={boundary}",
        "content-length": str(len(head) + size + len(tail)),
    }
    try:
        response = await client.post(url, content=body(), headers=all_headers)
    except httpx.HTTPError as exc:
        if sent > size:
            raise SourceChangedError("the file grew since it was queued") from exc
        raise NetworkError(f"POST {url}: {type(exc).__name__}: {exc}") from exc
    if sent != size or sha.hexdigest() != sha256:
        raise SourceChangedError(
            "the file changed since it was queued; the endpoint may have received the changed bytes"
        )
    status = response.status_code
    if 200 <= status <= 299:
        return
    raise _error_for(status, response)


def _error_for(status: int, response: httpx.Response) -> RemoteError:
    from ..backends._http_wire import parse_retry_after  # noqa: PLC0415

    detail = response.text[:200].strip()
    wait = parse_retry_after(response.headers.get("retry-after"), time.time())
    what = f"the endpoint answered HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429:
        return RateLimitedError(what, retry_after=wait)
    if status in _RETRYABLE or status >= 500:
        return ServerUnavailableError(what, retry_after=wait)
    return PermanentError(what)
