"""Blobs in an S3-compatible object store, for deployments of several servers.

Keys under the bucket's ``prefix`` (``tenant``: a digest of the tenant name)::

    t/<tenant>/tenant                 the tenant's name
    t/<tenant>/blobs/<sha256>         finished blobs
    t/<tenant>/uploads/<id>/state     an upload's length, hash, metadata, and its parts so far
    t/<tenant>/uploads/<id>/tail      the bytes after its last full part
    t/<tenant>/uploads/<id>/data      where its multipart upload is completed (staging)

tus chunks map onto an S3 multipart upload: arriving bytes fill parts of ``part_size``
(at least 5 MiB, as S3 requires of every part but the last); what does not fill a part
waits in the ``tail`` object for the next chunk. The ``state`` object, written last, is
the commit point of a chunk: a chunk that fails its checksum leaves it unchanged (parts
sent for it are overwritten by the next chunk), so the upload's offset never counts bytes
it does not keep. A blob becomes visible only when its verified bytes are copied (or, for
a blob smaller than one part, put) under ``blobs/<sha256>``: readers never see a partial
blob. Every server process sees the same uploads, so a client may resume on another one.

boto3 is synchronous: every call runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio.to_thread

from ..._blob_api import is_sha256, is_upload_id
from ._base import BlobInfo, BlobStorage, ChunkRejectedError, UploadInfo, tenant_key

__all__ = ["S3BlobStorage"]

_MIN_PART = 5 * 1024 * 1024
_READ = 1024 * 1024


class S3BlobStorage(BlobStorage):
    """Blobs in an S3 bucket (created if missing).

    Args:
        bucket: the bucket name.
        prefix: a key prefix (e.g. ``"nexus/"``); empty by default.
        endpoint_url: an S3-compatible endpoint (MinIO, Ceph, moto...); AWS by default.
        region: the region name.
        part_size: bytes per multipart part (at least 5 MiB).
        client: a boto3 S3 client to use instead of making one.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = 8 * 1024 * 1024,
        client: Any = None,
    ) -> None:
        if part_size < _MIN_PART:
            raise ValueError("S3 parts hold at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.part_size = part_size
        self._endpoint_url = endpoint_url
        self._region = region
        self._client = client

    def __repr__(self) -> str:
        return f"S3BlobStorage({self.bucket!r}, prefix={self.prefix!r})"

    @property
    def client(self) -> Any:
        """The boto3 client (made on first use)."""
        if self._client is None:
            import boto3  # noqa: PLC0415 - the s3 extra loads only here

            self._client = boto3.client(
                "s3", endpoint_url=self._endpoint_url, region_name=self._region
            )
        return self._client

    async def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        def call() -> Any:
            try:
                return fn(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload"):
                    raise KeyError(code) from exc
                raise OSError(f"S3: {code or exc}") from exc
            except BotoCoreError as exc:
                raise OSError(f"S3: {exc}") from exc

        return await anyio.to_thread.run_sync(call)

    async def open(self) -> None:
        try:
            await self._call(self.client.head_bucket, Bucket=self.bucket)
        except KeyError:
            await self._call(self.client.create_bucket, Bucket=self.bucket)

    # -- keys --------------------------------------------------------------------------------

    def _tenant(self, tenant: str) -> str:
        return f"{self.prefix}t/{tenant_key(tenant)}/"

    def _blob_key(self, tenant: str, sha256: str) -> str:
        if not is_sha256(sha256):
            raise ValueError("not a blob name")
        return f"{self._tenant(tenant)}blobs/{sha256}"

    def _upload_key(self, tenant: str, upload_id: str, what: str) -> str:
        if not is_upload_id(upload_id):
            raise ValueError("not an upload id")
        return f"{self._tenant(tenant)}uploads/{upload_id}/{what}"

    async def _get(self, key: str) -> bytes | None:
        try:
            answer = await self._call(self.client.get_object, Bucket=self.bucket, Key=key)
        except KeyError:
            return None
        data: bytes = await anyio.to_thread.run_sync(answer["Body"].read)
        return data

    async def _put(self, key: str, body: bytes) -> None:
        await self._call(self.client.put_object, Bucket=self.bucket, Key=key, Body=body)

    async def _state(self, tenant: str, upload_id: str) -> dict[str, Any] | None:
        raw = await self._get(self._upload_key(tenant, upload_id, "state"))
        if raw is None:
            return None
        try:
            state: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise OSError(f"upload state {upload_id} is damaged") from exc
        return state

    async def _save_state(self, tenant: str, upload_id: str, state: dict[str, Any]) -> None:
        await self._put(self._upload_key(tenant, upload_id, "state"), json.dumps(state).encode())

    # -- uploads -----------------------------------------------------------------------------

    async def create_upload(self, tenant: str, info: UploadInfo) -> None:
        name_key = self._tenant(tenant) + "tenant"
        if await self._get(name_key) is None:
            await self._put(name_key, tenant.encode())
        state: dict[str, Any] = {
            "length": info.length,
            "created_at": info.created_at,
            "sha256": info.sha256,
            "metadata": info.metadata,
            "blob": info.blob,
            "mpu": None,
            "parts": [],
            "tail": 0,
        }
        await self._save_state(tenant, info.upload_id, state)

    async def get_upload(self, tenant: str, upload_id: str) -> UploadInfo | None:
        state = await self._state(tenant, upload_id)
        return None if state is None else _info(upload_id, state)

    async def append(
        self,
        tenant: str,
        upload: UploadInfo,
        chunks: AsyncIterator[bytes],
        observe: Callable[[bytes], None],
        verify: Callable[[], bool] | None,
    ) -> int:
        state = await self._state(tenant, upload.upload_id)
        if state is None:
            raise OSError("the upload is gone")
        tail_key = self._upload_key(tenant, upload.upload_id, "tail")
        buffer = bytearray()
        if state["tail"]:
            buffer += (await self._get(tail_key) or b"")[: state["tail"]]
        old = len(buffer)
        parts: list[list[Any]] = [list(p) for p in state["parts"]]
        new_state = dict(state)
        failed: BaseException | None = None
        try:
            async for piece in chunks:
                buffer += piece
                while len(buffer) >= self.part_size:
                    block = bytes(buffer[: self.part_size])
                    fresh = block[old:] if old else block
                    old = max(0, old - self.part_size)
                    await anyio.to_thread.run_sync(observe, fresh)
                    parts.append(await self._send_part(tenant, upload, new_state, parts, block))
                    del buffer[: self.part_size]
            if len(buffer) > old:
                await anyio.to_thread.run_sync(observe, bytes(buffer[old:]))
                old = len(buffer)
            if verify is not None and not verify():
                raise ChunkRejectedError
        except BaseException as exc:
            if verify is not None:
                raise
            failed = exc
            if len(buffer) > old:
                observe(bytes(buffer[old:]))
        new_state["parts"] = parts
        new_state["tail"] = len(buffer)
        await self._put(tail_key, bytes(buffer))
        await self._save_state(tenant, upload.upload_id, new_state)
        if failed is not None:
            raise failed
        return int(sum(p[2] for p in parts)) + len(buffer)

    async def _send_part(
        self,
        tenant: str,
        upload: UploadInfo,
        state: dict[str, Any],
        parts: list[list[Any]],
        block: bytes,
    ) -> list[Any]:
        data_key = self._upload_key(tenant, upload.upload_id, "data")
        if state.get("mpu") is None:
            answer = await self._call(
                self.client.create_multipart_upload, Bucket=self.bucket, Key=data_key
            )
            state["mpu"] = answer["UploadId"]
        number = len(parts) + 1
        answer = await self._call(
            self.client.upload_part,
            Bucket=self.bucket,
            Key=data_key,
            UploadId=state["mpu"],
            PartNumber=number,
            Body=block,
        )
        return [number, answer["ETag"], len(block)]

    async def _complete(self, tenant: str, upload: UploadInfo) -> str:
        """Put the upload's bytes together under its staging key (once); return the key."""
        state = await self._state(tenant, upload.upload_id)
        if state is None:
            raise OSError("the upload is gone")
        data_key = self._upload_key(tenant, upload.upload_id, "data")
        if state.get("completed"):
            return data_key
        tail = b""
        if state["tail"]:
            tail = (await self._get(self._upload_key(tenant, upload.upload_id, "tail")) or b"")[
                : state["tail"]
            ]
        if state.get("mpu") is None:
            await self._put(data_key, tail)
        else:
            parts = [list(p) for p in state["parts"]]
            if tail:
                parts.append(await self._send_part(tenant, upload, state, parts, tail))
            await self._call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=data_key,
                UploadId=state["mpu"],
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e, _ in parts]},
            )
            state["parts"] = parts
            state["tail"] = 0
        state["completed"] = True
        await self._save_state(tenant, upload.upload_id, state)
        return data_key

    async def read_upload(self, tenant: str, upload: UploadInfo) -> AsyncIterator[bytes]:
        # Parts of an unfinished multipart upload cannot be read back: the service asks
        # only for complete uploads, which are put together first.
        key = await self._complete(tenant, upload)
        async for piece in self._read_key(key, 0, upload.length):
            yield piece

    async def commit(self, tenant: str, upload: UploadInfo, sha256: str) -> UploadInfo:
        target = self._blob_key(tenant, sha256)
        if await self.stat(tenant, sha256) is None:
            data_key = await self._complete(tenant, upload)
            await self._call(
                self.client.copy,
                CopySource={"Bucket": self.bucket, "Key": data_key},
                Bucket=self.bucket,
                Key=target,
            )
        await self._drop_bytes(tenant, upload.upload_id)
        state: dict[str, Any] = await self._state(tenant, upload.upload_id) or {}
        state.update(
            {
                "length": upload.length,
                "created_at": upload.created_at,
                "sha256": sha256,
                "metadata": upload.metadata,
                "blob": sha256,
                "mpu": None,
                "parts": [],
                "tail": 0,
                "completed": True,
            }
        )
        await self._save_state(tenant, upload.upload_id, state)
        return _info(upload.upload_id, state)

    async def put_blobs(
        self, tenant: str, blobs: Sequence[tuple[str, bytes]], now: float
    ) -> list[bool]:
        # One PUT per blob: an object appears whole or not at all.
        added = []
        for sha256, data in blobs:
            new = await self.stat(tenant, sha256) is None
            if new:
                await self._put(self._blob_key(tenant, sha256), data)
            added.append(new)
        return added

    async def _drop_bytes(self, tenant: str, upload_id: str) -> None:
        state = await self._state(tenant, upload_id)
        if state is not None and state.get("mpu") and not state.get("completed"):
            with contextlib.suppress(KeyError):
                await self._call(
                    self.client.abort_multipart_upload,
                    Bucket=self.bucket,
                    Key=self._upload_key(tenant, upload_id, "data"),
                    UploadId=state["mpu"],
                )
        for what in ("data", "tail"):
            await self._call(
                self.client.delete_object,
                Bucket=self.bucket,
                Key=self._upload_key(tenant, upload_id, what),
            )

    async def delete_upload(self, tenant: str, upload_id: str) -> bool:
        if await self._state(tenant, upload_id) is None:
            return False
        await self._drop_bytes(tenant, upload_id)
        await self._call(
            self.client.delete_object,
            Bucket=self.bucket,
            Key=self._upload_key(tenant, upload_id, "state"),
        )
        return True

    async def _keys(self, prefix: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(100_000):
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token is not None:
                kwargs["ContinuationToken"] = token
            answer = await self._call(self.client.list_objects_v2, **kwargs)
            found += answer.get("Contents", [])
            if not answer.get("IsTruncated"):
                break
            token = answer.get("NextContinuationToken")
        return found

    async def list_uploads(self, tenant: str) -> list[UploadInfo]:
        out = []
        for entry in await self._keys(self._tenant(tenant) + "uploads/"):
            pieces = str(entry["Key"]).split("/")
            upload_id, what = pieces[-2], pieces[-1]
            if what != "state" or not is_upload_id(upload_id):
                continue
            info = await self.get_upload(tenant, upload_id)
            if info is not None:
                out.append(info)
        return out

    # -- blobs -------------------------------------------------------------------------------

    async def stat(self, tenant: str, sha256: str) -> BlobInfo | None:
        try:
            answer = await self._call(
                self.client.head_object, Bucket=self.bucket, Key=self._blob_key(tenant, sha256)
            )
        except KeyError:
            return None
        return BlobInfo(sha256, int(answer["ContentLength"]), answer["LastModified"].timestamp())

    async def read(self, tenant: str, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        async for piece in self._read_key(self._blob_key(tenant, sha256), start, end):
            yield piece

    async def _read_key(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        if end <= start:
            return
        answer = await self._call(
            self.client.get_object, Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
        )
        body = answer["Body"]
        try:
            while True:
                piece = await anyio.to_thread.run_sync(body.read, _READ)
                if not piece:
                    break
                yield piece
        finally:
            body.close()

    async def delete(self, tenant: str, sha256: str) -> bool:
        if await self.stat(tenant, sha256) is None:
            return False
        await self._call(
            self.client.delete_object, Bucket=self.bucket, Key=self._blob_key(tenant, sha256)
        )
        return True

    async def list_blobs(self, tenant: str) -> list[BlobInfo]:
        out = []
        for entry in await self._keys(self._tenant(tenant) + "blobs/"):
            sha = entry["Key"].rsplit("/", 1)[-1]
            if is_sha256(sha):
                out.append(BlobInfo(sha, int(entry["Size"]), entry["LastModified"].timestamp()))
        return out

    async def tenants(self) -> list[str]:
        names = []
        for entry in await self._keys(self.prefix + "t/"):
            if entry["Key"].endswith("/tenant"):
                raw = await self._get(entry["Key"])
                if raw is not None:
                    names.append(raw.decode("utf-8", "replace"))
        return sorted(names)


def _info(upload_id: str, state: dict[str, Any]) -> UploadInfo:
    length = int(state["length"])
    blob = state.get("blob")
    offset = length if blob is not None else sum(p[2] for p in state["parts"]) + state["tail"]
    return UploadInfo(
        upload_id,
        length,
        offset,
        float(state.get("created_at", time.time())),
        state.get("sha256"),
        dict(state.get("metadata") or {}),
        blob,
    )
