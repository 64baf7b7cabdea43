"""The file endpoints over HTTP: tus 1.0 uploads under ``/v1/files``, reads under ``/v1/blobs``,
batches of small blobs by ``POST /v1/blobs``.

:func:`blob_routes` builds the Starlette routes for a :class:`~._service.BlobService`; the
app mounts them beside push and pull, behind the same authentication (the ``authorize``
callable maps a request to its tenant, raising the app's 401/429 answers). Paths,
headers and statuses are those of :mod:`nexus_store._blob_api`. Every error answer is
``{"error": code, "detail": text}`` with ``Tus-Resumable``; names in a path are checked
(upload ids: 32 hex digits, blobs: 64) before anything looks them up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..._blob_api import (
    BATCH_TYPE,
    BLOB_HEADER,
    BLOBS_PATH,
    FILES_PATH,
    MANIFEST_LENGTH,
    OFFSET_STREAM,
    TUS_RESUMABLE,
    TUS_VERSION,
    UPLOAD_CHECKSUM,
    UPLOAD_LENGTH,
    UPLOAD_METADATA,
    UPLOAD_OFFSET,
    decode_metadata,
    encode_metadata,
    parse_checksum,
)
from ._base import UploadInfo
from ._batch import check_batch_length, read_batch
from ._rules import BlobRefusedError, parse_range
from ._service import BlobService

__all__ = ["blob_routes"]

_log = logging.getLogger("nexus_store.server")
Authorize = Callable[[Request], Awaitable[str]]
_MAX_DIGITS = 19


def _refused(exc: BlobRefusedError) -> Response:
    return JSONResponse(
        {"error": exc.code, "detail": exc.detail},
        status_code=exc.status,
        headers={"tus-resumable": TUS_VERSION},
    )


def _int_header(request: Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_DIGITS:
        raise BlobRefusedError(400, "bad_header", f"{name} must be a non-negative integer")
    return int(raw)


def _check_version(request: Request) -> None:
    if request.headers.get(TUS_RESUMABLE) != TUS_VERSION:
        raise BlobRefusedError(412, "tus_version", f"send Tus-Resumable: {TUS_VERSION}")


def _check_offset_stream(request: Request) -> None:
    if request.headers.get("content-type", "").split(";")[0].strip() != OFFSET_STREAM:
        raise BlobRefusedError(415, "content_type", f"send Content-Type: {OFFSET_STREAM}")


def _checksum_of(request: Request) -> tuple[str, bytes] | None:
    raw = request.headers.get(UPLOAD_CHECKSUM)
    try:
        return parse_checksum(raw) if raw is not None else None
    except ValueError as exc:
        raise BlobRefusedError(400, "bad_checksum", str(exc)) from exc


def _upload_headers(upload: UploadInfo) -> dict[str, str]:
    headers = {
        "tus-resumable": TUS_VERSION,
        "upload-offset": str(upload.offset),
        "upload-length": str(upload.length),
        "cache-control": "no-store",
    }
    if upload.blob is not None:
        headers[BLOB_HEADER] = upload.blob
    return headers


class _Files:
    def __init__(self, service: BlobService, authorize: Authorize) -> None:
        self.service = service
        self.authorize = authorize

    async def options(self, request: Request) -> Response:
        return Response(status_code=204, headers=self.service.options())

    async def create(self, request: Request) -> Response:
        tenant = await self.authorize(request)
        try:
            _check_version(request)
            if request.headers.get("upload-defer-length") is not None:
                raise BlobRefusedError(400, "defer_length", "Upload-Defer-Length is not supported")
            length = _int_header(request, UPLOAD_LENGTH)
            if length is None:
                raise BlobRefusedError(400, "no_length", "Upload-Length is required")
            body_length = _int_header(request, "content-length") or 0
            if body_length > 0:
                _check_offset_stream(request)
            checksum = _checksum_of(request)
            try:
                metadata = decode_metadata(request.headers.get(UPLOAD_METADATA))
            except ValueError as exc:
                raise BlobRefusedError(400, "bad_metadata", str(exc)) from exc
            upload = await self.service.create(tenant, length, metadata)
        except BlobRefusedError as exc:
            return _refused(exc)
        if body_length > 0 and upload.offset < upload.length:
            # creation-with-upload: the body is the first chunk. A chunk refused (checksum,
            # size) leaves the upload where it is: the answer's offset says so, and the
            # client's next PATCH gets the reason.
            try:
                upload = await self.service.patch(
                    tenant,
                    upload.upload_id,
                    offset=0,
                    content_length=body_length,
                    checksum=checksum,
                    chunks=request.stream(),
                )
            except BlobRefusedError as exc:
                _log.info("first chunk of upload %s refused: %s", upload.upload_id, exc.code)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody reads it
        headers = _upload_headers(upload)
        headers["location"] = str(request.url_for("tus_upload", upload_id=upload.upload_id))
        return Response(status_code=201, headers=headers)

    async def head(self, request: Request) -> Response:
        tenant = await self.authorize(request)
        try:
            _check_version(request)
            upload = await self.service.head(tenant, request.path_params["upload_id"])
        except BlobRefusedError as exc:
            return Response(status_code=exc.status, headers={"tus-resumable": TUS_VERSION})
        headers = _upload_headers(upload)
        if upload.metadata:
            headers["upload-metadata"] = encode_metadata(upload.metadata)
        return Response(status_code=200, headers=headers)

    async def patch(self, request: Request) -> Response:
        tenant = await self.authorize(request)
        try:
            _check_version(request)
            _check_offset_stream(request)
            offset = _int_header(request, UPLOAD_OFFSET)
            if offset is None:
                raise BlobRefusedError(400, "no_offset", "Upload-Offset is required")
            checksum = _checksum_of(request)
            upload = await self.service.patch(
                tenant,
                request.path_params["upload_id"],
                offset=offset,
                content_length=_int_header(request, "content-length"),
                checksum=checksum,
                chunks=request.stream(),
            )
        except BlobRefusedError as exc:
            return _refused(exc)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it
        return Response(status_code=204, headers=_upload_headers(upload))

    async def delete(self, request: Request) -> Response:
        tenant = await self.authorize(request)
        try:
            _check_version(request)
            await self.service.terminate(tenant, request.path_params["upload_id"])
        except BlobRefusedError as exc:
            return _refused(exc)
        return Response(status_code=204, headers={"tus-resumable": TUS_VERSION})

    async def batch(self, request: Request) -> Response:
        tenant = await self.authorize(request)
        try:
            if request.headers.get("content-type", "").split(";")[0].strip() != BATCH_TYPE:
                raise BlobRefusedError(415, "content_type", f"send Content-Type: {BATCH_TYPE}")
            content_length, manifest_length = check_batch_length(
                _int_header(request, "content-length"),
                _int_header(request, MANIFEST_LENGTH),
                self.service.limits.max_chunk_bytes,
            )
            entries, blobs = await read_batch(
                request.stream(), content_length=content_length, manifest_length=manifest_length
            )
            answers = await self.service.put_batch(tenant, entries, blobs)
        except BlobRefusedError as exc:
            return _refused(exc)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it
        return JSONResponse(
            {"blobs": [answer.to_json() for answer in answers]},
            headers={"tus-resumable": TUS_VERSION, "cache-control": "no-store"},
        )

    async def blob(self, request: Request) -> Response:
        tenant = await self.authorize(request)
        sha = request.path_params["sha256"]
        try:
            info = await self.service.stat(tenant, sha)
            wanted = parse_range(request.headers.get("range"), info.size)
        except BlobRefusedError as exc:
            if request.method == "HEAD":
                return Response(status_code=exc.status)
            return _refused(exc)
        headers = {
            "accept-ranges": "bytes",
            "etag": f'"{sha}"',
            "cache-control": "private, max-age=31536000, immutable",
        }
        start, end = wanted if wanted is not None else (0, info.size)
        headers["content-length"] = str(end - start)
        status = 200
        if wanted is not None:
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{info.size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)

        async def body() -> AsyncIterator[bytes]:
            async for piece in self.service.read(tenant, sha, start, end):
                yield piece

        return StreamingResponse(
            body(), status_code=status, headers=headers, media_type="application/octet-stream"
        )


Endpoint = Callable[[Request], Awaitable[Response]]


def _storage_guard(endpoint: Endpoint) -> Endpoint:
    """A failure of the blob storage (``OSError``) answers 503 with ``Retry-After``: the
    client keeps its transfer and comes back, as it does for any unavailable server."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except OSError as exc:
            _log.warning("blob storage failed on %s %s: %s", request.method, request.url.path, exc)
            return JSONResponse(
                {"error": "storage_unavailable", "detail": "the file storage failed; retry"},
                status_code=503,
                headers={"tus-resumable": TUS_VERSION, "retry-after": "1"},
            )

    return guarded


def blob_routes(service: BlobService, authorize: Authorize) -> list[Route]:
    """The routes of the file endpoints (see the module docstring).

    Args:
        service: the blob service to serve.
        authorize: maps a request to its tenant (raising the app's error answers).
    """
    files = _Files(service, authorize)
    return [
        Route(FILES_PATH, _storage_guard(files.options), methods=["OPTIONS"]),
        Route(FILES_PATH, _storage_guard(files.create), methods=["POST"]),
        Route(FILES_PATH + "/{upload_id}", _storage_guard(files.options), methods=["OPTIONS"]),
        Route(
            FILES_PATH + "/{upload_id}",
            _storage_guard(files.head),
            methods=["HEAD"],
            name="tus_upload",
        ),
        Route(FILES_PATH + "/{upload_id}", _storage_guard(files.patch), methods=["PATCH"]),
        Route(FILES_PATH + "/{upload_id}", _storage_guard(files.delete), methods=["DELETE"]),
        Route(BLOBS_PATH, _storage_guard(files.batch), methods=["POST"]),
        Route(BLOBS_PATH + "/{sha256}", _storage_guard(files.blob), methods=["GET", "HEAD"]),
    ]
