"""The S3 backend: stored files as objects of one bucket of any S3-compatible service (AWS S3,
MinIO, R2), through the `minio` SDK.

The SDK is blocking, so every call runs on this store's own small thread pool: a slow or
unreachable endpoint then ties up those threads, not the default executor local disk, DNS and the
rest of the server share. Transport failures (refused, reset, timed out after the SDK's retries)
surface as ConnectionError naming the endpoint; S3's own error answers as the SDK's S3Error.

Uploads through Ripple are streamed into a multipart upload part by part (at most
MAX_PARTS_IN_FLIGHT parts uploading while the next one fills), so a file is never held whole;
one smaller than a part is a single PUT. S3 makes an object visible only when its PUT or
CompleteMultipartUpload succeeds, so a failed upload leaves at most an unfinished multipart
upload, which is aborted.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import io
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.datatypes import Part as S3Part
from minio.error import S3Error

from server.core.storage.blobs import CHUNK_BYTES, NotFound, Part, TooLarge, Written

log = logging.getLogger("ripple.storage")

T = TypeVar("T")

MIN_PART_BYTES = 5 << 20  # S3's minimum for every part but the last
PART_BYTES = 8 << 20  # the first 1,000 parts; doubled every 1,000 so 10,000 parts always suffice
MAX_PARTS_IN_FLIGHT = 2  # parts uploading while the next fills: memory <= about 4 parts
THREADS = 8  # below the SDK's connection pool (10), so no connection is ever thrown away


async def _empty() -> AsyncIterator[bytes]:
    return
    yield


class S3Store:
    """Objects under their storage id in `bucket`. Building it touches no network (a server starts
    while S3 is down); the bucket is checked, and created when missing, once, before the first
    call that needs it (`ready`). Presigning is always local: the client is given its region."""

    name = "s3"

    def __init__(self, client: Minio, bucket: str, endpoint: str, part_bytes: int = PART_BYTES) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts must be at least {MIN_PART_BYTES} bytes")
        self.client, self.bucket, self.endpoint, self.part_bytes = client, bucket, endpoint, part_bytes
        self._pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="ripple-s3")
        self._cleanups: set[asyncio.Task[None]] = set()
        self._bucket_ready = False
        self._bucket_lock = asyncio.Lock()

    async def ready(self) -> None:
        """Check the bucket, creating it when missing; once it succeeded, never again. Failing
        (S3 unreachable, keys refused) it raises and the next call tries again."""
        if self._bucket_ready:
            return
        async with self._bucket_lock:
            if not self._bucket_ready:
                await self._call(self._ensure_bucket)
                self._bucket_ready = True

    def _ensure_bucket(self) -> None:
        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket)
            log.info("created bucket %s on %s", self.bucket, self.endpoint)
        except S3Error as exc:  # another server created it first
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    async def _wait(self, future: concurrent.futures.Future[T]) -> T:
        """The call's result. Shielded: a cancelled caller stops waiting, the call carries on (a
        thread cannot be interrupted), and cleanup can still wait for it."""
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionError(f"S3 endpoint {self.endpoint} unreachable: {exc}") from exc

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._wait(self._submit(fn, *args, **kwargs))

    async def put(self, key: str, chunks: AsyncIterator[bytes], max_bytes: int | None = None,
                  content_type: str | None = None) -> Written:
        _check_key(key)
        await self.ready()
        content_type = content_type or "application/octet-stream"
        h, size = hashlib.sha256(), 0
        buffer: list[bytes] = []
        buffered = 0
        upload_id: str | None = None
        uploading: deque[tuple[int, concurrent.futures.Future[str]]] = deque()
        parts: list[S3Part] = []
        writing = False  # the final PUT or the completion has been sent: the object may exist

        async def send_part(data: bytes) -> None:
            nonlocal upload_id
            if upload_id is None:
                # The SDK's own put_object does this too, but only from a blocking file-like
                # reader; see start_multipart for why these private calls.
                upload_id = await self._call(self.client._create_multipart_upload, self.bucket, key,
                                             {"Content-Type": content_type})
            if len(uploading) >= MAX_PARTS_IN_FLIGHT:
                number, future = uploading[0]
                parts.append(S3Part(number, await self._wait(future)))
                uploading.popleft()
            number = len(parts) + len(uploading) + 1
            uploading.append((number, self._submit(self.client._upload_part, self.bucket, key, data, None,
                                                   upload_id, number)))

        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(max_bytes)
                buffer.append(chunk)
                buffered += len(chunk)
                part_limit = self.part_bytes << ((len(parts) + len(uploading)) // 1000)
                if buffered >= part_limit:
                    data = b"".join(buffer)
                    buffer, buffered = [], 0
                    await self._call(h.update, data)  # hashlib drops the GIL: off the loop, in order
                    await send_part(data)
            data = b"".join(buffer)
            buffer = []
            await self._call(h.update, data)
            if upload_id is None:
                writing = True
                await self._call(self.client.put_object, self.bucket, key, io.BytesIO(data), len(data),
                                 content_type=content_type, part_size=max(len(data), MIN_PART_BYTES))
            else:
                if data:
                    await send_part(data)
                while uploading:
                    number, future = uploading[0]
                    parts.append(S3Part(number, await self._wait(future)))
                    uploading.popleft()
                writing = True
                await self._call(self.client._complete_multipart_upload, self.bucket, key, upload_id, parts)
        except BaseException:
            # Shielded and kept referenced: cancelled again, the cleanup still finishes.
            await asyncio.shield(self._keep(self._discard(key, upload_id, [f for _, f in uploading], writing)))
            raise
        return Written(size, base64.b64encode(h.digest()).decode("ascii"))

    def _keep(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _discard(self, key: str, upload_id: str | None, uploading: list[concurrent.futures.Future[str]],
                       writing: bool) -> None:
        """Leave nothing of a failed put: let its part uploads finish (a part landing after the
        abort would be kept, and billed), abort the multipart upload, remove the object when
        the final request may have gone through."""
        for future in uploading:
            future.cancel()
        if uploading:
            await asyncio.wait([asyncio.wrap_future(f) for f in uploading])
        try:
            if upload_id is not None:
                await self.abort_multipart(key, upload_id)
            if writing:
                await self.delete(key)
        except Exception:
            log.exception("could not clean up the failed upload of %s; an incomplete multipart upload may "
                          "remain (a bucket lifecycle rule AbortIncompleteMultipartUpload removes it)", key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        _check_key(key)
        await self.ready()
        if end is not None and end <= start:
            if await self.size(key) is None:
                raise NotFound(key)
            return _empty()
        try:
            # length 0 means "to the end" to the SDK, which `end is None` is here
            response = await self._call(self.client.get_object, self.bucket, key, offset=start,
                                        length=0 if end is None else end - start)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise NotFound(key) from None
            if exc.code == "InvalidRange":  # starts past the end: nothing, as a file read there
                return _empty()
            raise
        return self._chunks(response)

    async def _chunks(self, response: urllib3.BaseHTTPResponse) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._call(response.read, CHUNK_BYTES):
                yield chunk
        finally:
            # Not read to the end, the connection cannot be reused: closing drops it.
            await self._call(_release, response)

    async def size(self, key: str) -> int | None:
        _check_key(key)
        await self.ready()
        try:
            stat = await self._call(self.client.stat_object, self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise
        return stat.size

    async def delete(self, key: str) -> None:
        _check_key(key)
        await self.ready()
        await self._call(self.client.remove_object, self.bucket, key)  # S3: no error when absent

    def download_url(self, key: str, expires_seconds: int, content_type: str | None = None) -> str | None:
        _check_key(key)
        headers: dict[str, str | list[str] | tuple[str]] | None = (
            {"response-content-type": content_type} if content_type else None)
        return self.client.presigned_get_object(self.bucket, key, timedelta(seconds=expires_seconds),
                                                response_headers=headers)

    # Direct multipart uploads. minio 7.2 has no public call to create, complete or abort one;
    # its put_object and compose_object use these private methods, unchanged since 7.0. They are
    # less fragile than reimplementing the requests over presigned URLs (our own XML bodies,
    # error parsing and retries), and tests/test_blobs.py runs each against a real S3 server, so
    # an SDK that changed them fails the suite rather than production.
    async def start_multipart(self, key: str, content_type: str | None) -> str:
        _check_key(key)
        await self.ready()
        return await self._call(self.client._create_multipart_upload, self.bucket, key,
                                {"Content-Type": content_type or "application/octet-stream"})

    def part_url(self, key: str, upload_id: str, number: int, expires_seconds: int) -> str:
        _check_key(key)
        if not 1 <= number <= 10_000:
            raise ValueError(f"part numbers go from 1 to 10000, not {number}")
        return self.client.get_presigned_url(
            "PUT", self.bucket, key, timedelta(seconds=expires_seconds),
            extra_query_params={"partNumber": str(number), "uploadId": upload_id})

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> None:
        _check_key(key)
        await self.ready()
        ordered = sorted(parts, key=lambda p: p.number)
        await self._call(self.client._complete_multipart_upload, self.bucket, key, upload_id,
                         [S3Part(p.number, p.etag.strip('"')) for p in ordered])

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        _check_key(key)
        await self.ready()
        try:
            await self._call(self.client._abort_multipart_upload, self.bucket, key, upload_id)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":  # already aborted or completed
                raise


def _release(response: urllib3.BaseHTTPResponse) -> None:
    response.close()
    response.release_conn()


def _check_key(key: str) -> None:
    if not key or not key.isalnum() or not key.isascii():
        raise ValueError(f"invalid storage key {key!r}")
