"""Where blobs go and come from: the :class:`BlobRemote` seam and its two implementations.

- :class:`HttpBlobRemote`: the tus endpoints of ``nexus-store serve`` over the
  :class:`~nexus_store.backends.HttpBackend`'s own connection pool, token and pause (a
  ``Retry-After`` pause of the backend holds file requests too, and the other way round).
- :class:`InProcessBlobRemote`: the blob service of an in-process server (what a
  :class:`~nexus_store.backends.MemoryBackend`'s files go to).

:func:`blob_remote_for` picks one for a backend. Failures are our exceptions (translated
here, like every backend does); the tus answers a transfer reacts to have their own:
:class:`UploadGoneError` (404/410: start over), :class:`OffsetMismatchError` (409: ask
the offset again), :class:`ChunkRejectedError` (460: send the chunk again),
:class:`BlobMismatchError` (the complete upload did not hash to the declared blob).

Small blobs may also go many at once (:meth:`BlobRemote.put_blobs`, ``POST /v1/blobs``)
where the server says it takes batches (:meth:`BlobRemote.max_batch`); each blob gets its
own :class:`BatchOutcome`.
"""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from .._blob_api import (
    BATCH_TYPE,
    BLOBS_PATH,
    CHECKSUM_ALGORITHMS,
    CHECKSUM_MISMATCH,
    FILES_PATH,
    MANIFEST_LENGTH,
    MAX_BATCH_HEADER,
    MAX_CHUNK_HEADER,
    OFFSET_STREAM,
    TUS_VERSION,
    BatchEntry,
    checksum_header,
    encode_manifest,
    encode_metadata,
    is_upload_id,
)
from .._exceptions import (
    LifecycleError,
    NetworkError,
    PermanentError,
    ProtocolError,
    RemoteError,
    RetryableError,
)
from .._remote import RemoteBackend

__all__ = [
    "BatchOutcome",
    "BlobMismatchError",
    "BlobRemote",
    "ChunkRejectedError",
    "HttpBlobRemote",
    "InProcessBlobRemote",
    "OffsetMismatchError",
    "UploadGoneError",
    "blob_remote_for",
]


class UploadGoneError(RetryableError):
    """The server does not know the upload (any more): start a new one."""


class OffsetMismatchError(RetryableError):
    """The chunk was not at the server's offset: ask for the offset again."""


class ChunkRejectedError(RetryableError):
    """The server refused a chunk whose checksum did not match: send it again."""


class BlobMismatchError(RetryableError):
    """The complete upload did not hash to the declared blob; the server dropped it."""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What the server did with one blob of a batch: stored it (or had it), or refused it
    (``error``: what a single upload of it would have raised)."""

    sha256: str
    error: RemoteError | None = None


class BlobRemote(abc.ABC):
    """A server's blob endpoints, as a transfer uses them (one tenant's view)."""

    async def max_batch(self) -> int | None:
        """The largest batch body the server takes (``None``: it takes no batches)."""
        return None

    async def put_blobs(self, blobs: Sequence[tuple[str, bytes]]) -> list[BatchOutcome]:
        """Send whole blobs (hash, bytes) in one request; an outcome per blob, in order.

        Raises:
            RemoteError: the batch as a whole failed (nothing is known of its blobs).
        """
        raise PermanentError("this server takes no batches")

    @abc.abstractmethod
    async def max_chunk(self) -> int | None:
        """The largest PATCH body the server accepts (``None``: it does not say)."""

    async def checksums(self) -> tuple[str, ...]:
        """The chunk checksums the server takes (tus ``Tus-Checksum-Algorithm``)."""
        return ()

    @abc.abstractmethod
    async def create(
        self,
        length: int,
        metadata: Mapping[str, str],
        first: tuple[bytes, tuple[str, bytes] | None] | None = None,
    ) -> tuple[str, int]:
        """Start an upload; its id and offset (the length if the server has the blob).

        ``first``: the first chunk and its checksum, sent with the creation where the
        server supports it (tus creation-with-upload); the offset says what it kept.
        """

    @abc.abstractmethod
    async def offset(self, upload_id: str) -> int:
        """The bytes the server holds of an upload.

        Raises:
            UploadGoneError: the server does not know it.
        """

    @abc.abstractmethod
    async def patch(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        length: int,
        checksum: tuple[str, bytes] | None,
    ) -> int:
        """Send ``length`` bytes at ``offset``; the new offset."""

    @abc.abstractmethod
    async def terminate(self, upload_id: str) -> None:
        """Drop an upload (best effort)."""

    @abc.abstractmethod
    async def size_of(self, sha256: str) -> int | None:
        """The blob's size if the server has it."""

    @abc.abstractmethod
    def read(self, sha256: str, start: int) -> Any:
        """``async with remote.read(sha, start) as (total, pieces)``: the blob's bytes from
        ``start`` on (a range request), and its total size.

        Raises:
            BlobNotFoundError: the server does not have it.
        """


# -- HTTP ------------------------------------------------------------------------------------


class HttpBlobRemote(BlobRemote):
    """The blob endpoints of the server an :class:`~nexus_store.backends.HttpBackend` talks to.

    Args:
        backend: the backend whose connections, token and pause are used.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._max_chunk: int | None = None
        self._max_batch: int | None = None
        self._with_upload = False
        self._checksums: tuple[str, ...] = ()
        self._asked = False

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"tus-resumable": TUS_VERSION, **(extra or {})}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One request with the backend's token (refreshed once after a 401) and pause."""
        from ..backends._http_wire import error_for_status  # noqa: PLC0415
        from ..backends._pause import pause_for  # noqa: PLC0415

        backend = self.backend
        if backend._closed:
            raise LifecycleError("the HttpBackend is closed")
        backend._pause.check()
        token = await backend._tokens.for_request()
        for attempt in range(2):
            all_headers = dict(headers or {})
            if token is not None:
                all_headers["authorization"] = f"Bearer {token}"
            request = backend._client.build_request(
                method, path, headers=all_headers, content=content
            )
            backend._bind_loop()
            try:
                response = await backend._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, method, path) from exc
            status = response.status_code
            if status == 401 and token is not None:
                await response.aclose()
                backend._tokens.refuse(token)
                if attempt == 0 and backend._tokens.can_change and content is None:
                    token = await backend._tokens.replacement(token)
                    continue
            if status in (401, 403, 429) or status >= 500:
                body = await _read_small(response)
                error = error_for_status(status, response.headers, body, now=backend._clock.now())
                assert error is not None
                seconds = pause_for(status, error.retry_after)
                if seconds is not None:
                    backend._pause.start(seconds, error)
                raise error
            if not stream:
                await _read_small(response)
            answer: httpx.Response = response
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def max_chunk(self) -> int | None:
        if not self._asked:
            response = await self._send("OPTIONS", FILES_PATH, headers=self._headers())
            if response.status_code == 404:
                raise PermanentError("the server has no file endpoints (it stores no files)")
            raw = response.headers.get(MAX_CHUNK_HEADER, "")
            self._max_chunk = int(raw) if raw.isdigit() and int(raw) > 0 else None
            raw = response.headers.get(MAX_BATCH_HEADER, "")
            self._max_batch = int(raw) if raw.isdigit() and int(raw) > 0 else None
            extensions = response.headers.get("tus-extension", "").split(",")
            self._with_upload = "creation-with-upload" in (e.strip() for e in extensions)
            offered = response.headers.get("tus-checksum-algorithm", "").split(",")
            self._checksums = tuple(a.strip().lower() for a in offered if a.strip())
            self._asked = True
        return self._max_chunk

    async def checksums(self) -> tuple[str, ...]:
        await self.max_chunk()
        return self._checksums

    async def max_batch(self) -> int | None:
        await self.max_chunk()
        return self._max_batch

    async def put_blobs(self, blobs: Sequence[tuple[str, bytes]]) -> list[BatchOutcome]:
        manifest = encode_manifest([BatchEntry(sha, len(data)) for sha, data in blobs])
        body = b"".join([manifest, *(data for _, data in blobs)])
        headers = {"content-type": BATCH_TYPE, MANIFEST_LENGTH: str(len(manifest))}
        response = await self._send(
            "POST", BLOBS_PATH, headers=self._headers(headers), content=body, stream=True
        )
        try:
            if response.status_code != 200:
                await response.aread()
                raise _refusal(response)
            data = await response.aread()
        except httpx.HTTPError as exc:
            raise _transport_error(exc, "POST", BLOBS_PATH) from exc
        finally:
            await response.aclose()
        return _outcomes(data, [sha for sha, _ in blobs])

    async def create(
        self,
        length: int,
        metadata: Mapping[str, str],
        first: tuple[bytes, tuple[str, bytes] | None] | None = None,
    ) -> tuple[str, int]:
        headers = {"upload-length": str(length), "upload-metadata": encode_metadata(metadata)}
        content = None
        if first is not None and self._with_upload:
            content, checksum = first
            headers["content-type"] = OFFSET_STREAM
            if checksum is not None:
                headers["upload-checksum"] = checksum_header(*checksum)
        response = await self._send(
            "POST", FILES_PATH, headers=self._headers(headers), content=content
        )
        if response.status_code != 201:
            raise _refusal(response)
        upload_id = response.headers.get("location", "").rstrip("/").rsplit("/", 1)[-1]
        if not is_upload_id(upload_id):
            raise ProtocolError("the server answered an upload location that is not ours")
        return upload_id, _offset_header(response)

    async def offset(self, upload_id: str) -> int:
        response = await self._send("HEAD", f"{FILES_PATH}/{upload_id}", headers=self._headers())
        if response.status_code in (404, 410):
            raise UploadGoneError("the server does not know the upload")
        if response.status_code != 200:
            raise _refusal(response)
        return _offset_header(response)

    async def patch(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        length: int,
        checksum: tuple[str, bytes] | None,
    ) -> int:
        headers = {
            "upload-offset": str(offset),
            "content-type": OFFSET_STREAM,
            "content-length": str(length),
        }
        if checksum is not None:
            headers["upload-checksum"] = checksum_header(*checksum)
        response = await self._send(
            "PATCH", f"{FILES_PATH}/{upload_id}", headers=self._headers(headers), content=body
        )
        if response.status_code == 204:
            return _offset_header(response)
        raise _refusal(response)

    async def terminate(self, upload_id: str) -> None:
        await self._send("DELETE", f"{FILES_PATH}/{upload_id}", headers=self._headers())

    async def size_of(self, sha256: str) -> int | None:
        response = await self._send("HEAD", f"{BLOBS_PATH}/{sha256}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _refusal(response)
        return _int_header(response, "content-length")

    @asynccontextmanager
    async def read(
        self, sha256: str, start: int
    ) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        from .._exceptions import BlobNotFoundError  # noqa: PLC0415

        headers = {"range": f"bytes={start}-"} if start else {}
        response = await self._send("GET", f"{BLOBS_PATH}/{sha256}", headers=headers, stream=True)
        try:
            if response.status_code == 404:
                raise BlobNotFoundError(f"the server has no blob {sha256}")
            if response.status_code == 416:
                raise ProtocolError("the server refused the byte range")
            if response.status_code not in (200, 206) or (start and response.status_code != 206):
                raise _refusal(response)
            if response.status_code == 206:
                total = int(response.headers.get("content-range", "/0").rsplit("/", 1)[-1])
            else:
                total = _int_header(response, "content-length")

            async def pieces() -> AsyncIterator[bytes]:
                try:
                    async for piece in response.aiter_raw():
                        yield piece
                except httpx.HTTPError as exc:
                    raise _transport_error(exc, "GET", BLOBS_PATH) from exc

            yield total, pieces()
        finally:
            await response.aclose()


async def _read_small(response: httpx.Response) -> bytes:
    try:
        data = await response.aread()
    except httpx.HTTPError:
        data = b""
    finally:
        await response.aclose()
    return data[:8192]


def _outcomes(data: bytes, sent: list[str]) -> list[BatchOutcome]:
    """The per-blob outcomes of a batch's answer (checked against what was sent)."""
    try:
        answers = json.loads(data)["blobs"]
        if not isinstance(answers, list) or len(answers) != len(sent):
            raise TypeError
        out = []
        for answer, sha in zip(answers, sent, strict=True):
            status = int(answer["status"])
            if answer["sha256"] != sha:
                raise TypeError
            error = None
            if status not in (200, 201):
                error = _refusal_of(status, str(answer.get("error")), str(answer.get("detail")))
            out.append(BatchOutcome(sha, error))
    except (ValueError, TypeError, KeyError) as exc:
        raise ProtocolError("the server's answer to a batch is not one") from exc
    return out


def _int_header(response: httpx.Response, name: str) -> int:
    raw = response.headers.get(name, "")
    if not raw.isdigit():
        raise ProtocolError(f"the server's answer lacks a valid {name}")
    return int(raw)


def _offset_header(response: httpx.Response) -> int:
    return _int_header(response, "upload-offset")


def _refusal(response: httpx.Response) -> RemoteError:
    """The error a tus answer other than success stands for."""
    status = response.status_code
    detail = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            code = str(body.get("error", ""))
            detail = f"{code}: {str(body.get('detail', ''))[:300]}"
    except (ValueError, httpx.ResponseNotRead):
        code = ""
    else:
        code = detail.split(":", 1)[0]
    where = f"(HTTP {status}) {detail}".strip()
    if status in (404, 410):
        return UploadGoneError(f"the server does not know the upload {where}")
    if status == 409:
        return OffsetMismatchError(f"the offset did not match the server's {where}")
    if status == 423:
        return RetryableError(f"the upload is busy on the server {where}", retry_after=1.0)
    if status == CHECKSUM_MISMATCH:
        if code == "blob_hash_mismatch":
            return BlobMismatchError(f"the server refused the blob {where}")
        return ChunkRejectedError(f"the server refused a chunk {where}")
    if status == 413:
        from .._exceptions import PayloadTooLargeError  # noqa: PLC0415

        return PayloadTooLargeError(f"the server refused the size {where}")
    if 400 <= status <= 499:
        return PermanentError(f"the server refused the file request {where}")
    return ProtocolError(f"unexpected answer to a file request {where}")


def _transport_error(exc: httpx.HTTPError, method: str, path: str) -> RemoteError:
    if isinstance(exc, httpx.TimeoutException):
        return NetworkError(f"{method} {path}: timed out ({type(exc).__name__})")
    return NetworkError(f"{method} {path}: {type(exc).__name__}: {exc}")


# -- in process ------------------------------------------------------------------------------


class InProcessBlobRemote(BlobRemote):
    """The blob service of an in-process server, for one tenant.

    Args:
        service: a :class:`~nexus_store.server.blobs.BlobService`.
        tenant: whose blobs.
    """

    def __init__(self, service: Any, tenant: str) -> None:
        self.service = service
        self.tenant = tenant

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from ..server.blobs import BlobRefusedError  # noqa: PLC0415

        try:
            return await fn(*args, **kwargs)
        except BlobRefusedError as exc:
            raise _refusal_of(exc.status, exc.code, exc.detail) from exc
        except OSError as exc:
            raise NetworkError(f"the blob storage failed: {exc}") from exc

    async def max_chunk(self) -> int | None:
        return int(self.service.limits.max_chunk_bytes)

    async def checksums(self) -> tuple[str, ...]:
        return CHECKSUM_ALGORITHMS

    async def max_batch(self) -> int | None:
        return int(self.service.limits.max_chunk_bytes)

    async def put_blobs(self, blobs: Sequence[tuple[str, bytes]]) -> list[BatchOutcome]:
        entries = [BatchEntry(sha, len(data)) for sha, data in blobs]
        answers = await self._call(
            self.service.put_batch, self.tenant, entries, [data for _, data in blobs]
        )
        return [
            BatchOutcome(
                a.sha256,
                None if a.status in (200, 201) else _refusal_of(a.status, a.error, a.detail),
            )
            for a in answers
        ]

    async def create(
        self,
        length: int,
        metadata: Mapping[str, str],
        first: tuple[bytes, tuple[str, bytes] | None] | None = None,
    ) -> tuple[str, int]:
        info = await self._call(self.service.create, self.tenant, length, dict(metadata))
        if first is None or info.offset >= info.length:
            return str(info.upload_id), int(info.offset)
        data, checksum = first

        async def body() -> AsyncIterator[bytes]:
            yield data

        # As the HTTP server does: a refused first chunk leaves the upload where it is.
        with contextlib.suppress(RemoteError):
            offset = await self.patch(info.upload_id, 0, body(), len(data), checksum)
            return str(info.upload_id), offset
        return str(info.upload_id), int(info.offset)

    async def offset(self, upload_id: str) -> int:
        info = await self._call(self.service.head, self.tenant, upload_id)
        return int(info.offset)

    async def patch(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        length: int,
        checksum: tuple[str, bytes] | None,
    ) -> int:
        info = await self._call(
            self.service.patch,
            self.tenant,
            upload_id,
            offset=offset,
            content_length=length,
            checksum=checksum,
            chunks=body,
        )
        return int(info.offset)

    async def terminate(self, upload_id: str) -> None:
        await self._call(self.service.terminate, self.tenant, upload_id)

    async def size_of(self, sha256: str) -> int | None:
        info = await self.service.storage.stat(self.tenant, sha256)
        return None if info is None else int(info.size)

    @asynccontextmanager
    async def read(
        self, sha256: str, start: int
    ) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        from .._exceptions import BlobNotFoundError  # noqa: PLC0415

        size = await self.size_of(sha256)
        if size is None:
            raise BlobNotFoundError(f"the server has no blob {sha256}")
        yield size, self.service.read(self.tenant, sha256, start, size)


def _refusal_of(status: int, code: str, detail: str) -> RemoteError:
    where = f"(HTTP {status}) {code}: {detail}"
    if status == 404:
        return UploadGoneError(where)
    if status == 409:
        return OffsetMismatchError(where)
    if status == 423:
        return RetryableError(where, retry_after=1.0)
    if status == CHECKSUM_MISMATCH:
        return (
            BlobMismatchError(where) if code == "blob_hash_mismatch" else ChunkRejectedError(where)
        )
    if status == 413:
        from .._exceptions import PayloadTooLargeError  # noqa: PLC0415

        return PayloadTooLargeError(where)
    return PermanentError(where)


def blob_remote_for(backend: RemoteBackend) -> BlobRemote:
    """The blob endpoints of the server ``backend`` syncs with.

    Raises:
        PermanentError: the backend has no place for files (e.g. straight to PostgreSQL).
    """
    from ..backends._http import HttpBackend  # noqa: PLC0415
    from ..backends._in_process import InProcessBackend  # noqa: PLC0415
    from ..backends._postgres import PostgresBackend  # noqa: PLC0415

    seen = 0
    current: Any = backend
    while seen < 10:
        cached = getattr(current, "_nexus_blob_remote", None)
        if isinstance(cached, BlobRemote):
            return cached
        if isinstance(current, HttpBackend):
            remote: BlobRemote = HttpBlobRemote(current)
            current._nexus_blob_remote = remote  # type: ignore[attr-defined]
            return remote
        if isinstance(current, InProcessBackend) and not isinstance(current, PostgresBackend):
            from ..server.blobs import in_process_blobs  # noqa: PLC0415

            remote = InProcessBlobRemote(in_process_blobs(current._core), current.tenant)
            current._nexus_blob_remote = remote  # type: ignore[attr-defined]
            return remote
        inner = getattr(current, "inner", None)
        if inner is None:
            break
        current = inner
        seen += 1
    raise PermanentError(f"{backend!r} has no place for files: sync files with a sync server")
