"""Blob stores: the bytes of stored files, by key (the storage id), on local disk or in an
S3-compatible bucket. Both behave the same through `BlobStore`; everything above uses only it.

Bytes are streamed in chunks of at most CHUNK_BYTES both ways and hashed (sha256) on the way in:
no file is ever held whole in memory. Blocking calls (file I/O, the `minio` SDK) run on worker
threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK_BYTES = 1 << 20  # what one read or write moves, and what a reader holds at a time


class TooLarge(Exception):
    """The stream passed `max_bytes`: nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit


class NotFound(Exception):
    """No object under that key."""


class Unsupported(Exception):
    """The backend cannot do this (direct multipart uploads on local disk)."""


@dataclass(frozen=True)
class Written:
    size: int
    sha256: str  # base64 of the digest, as Convex's `_storage.sha256`


@dataclass(frozen=True)
class Part:
    number: int  # 1-based, as S3 numbers parts
    etag: str


class BlobStore(Protocol):
    """What file storage needs from a backend. Keys are storage ids ([a-z0-9]); every method may
    raise OSError (or the SDK's errors) when the backend is unreachable."""

    name: str  # "local" or "s3", for logs and metrics

    async def put(self, key: str, chunks: AsyncIterator[bytes], max_bytes: int | None = None,
                  content_type: str | None = None) -> Written:
        """Store the stream under `key`, hashing it on the way. Past `max_bytes` raises TooLarge;
        on any failure (TooLarge, the stream raising, cancellation) nothing is left under `key`."""
        ...

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) (end None: to the end) in chunks of at most CHUNK_BYTES.
        Raises NotFound before the first chunk when there is no such object."""
        ...

    async def size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; no error when there is none."""
        ...

    def download_url(self, key: str, expires_seconds: int, content_type: str | None = None) -> str | None:
        """A URL the object can be fetched from without passing through Ripple (S3: presigned),
        or None when Ripple serves it itself (local disk)."""
        ...

    # Direct multipart uploads (S3 only; local disk raises Unsupported).
    async def start_multipart(self, key: str, content_type: str | None) -> str:
        """Start a multipart upload under `key`; returns its upload id."""
        ...

    def part_url(self, key: str, upload_id: str, number: int, expires_seconds: int) -> str:
        """A presigned URL a client PUTs part `number` (1..10000) to; the response's ETag header
        is the part's etag."""
        ...

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> None: ...

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...


async def digest(store: BlobStore, key: str) -> Written:
    """Size and sha256 of a stored object, read back in chunks (a multipart upload's bytes never
    passed through Ripple, so it hashes them once, after completion)."""
    h, size = hashlib.sha256(), 0
    async for chunk in await store.read(key):
        h.update(chunk)
        size += len(chunk)
    return Written(size, base64.b64encode(h.digest()).decode("ascii"))


class LocalDisk:
    """Files under `root`, one per key (`root/<key[:2]>/<key>`), written to a temporary name and
    renamed into place once complete, so a reader never sees half a file."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not key or not key.isalnum() or not key.isascii():
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key[:2] / key

    async def put(self, key: str, chunks: AsyncIterator[bytes], max_bytes: int | None = None,
                  content_type: str | None = None) -> Written:
        path = self._path(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        partial = path.with_name(f".{key}.{secrets.token_hex(4)}.part")
        h, size = hashlib.sha256(), 0
        out = await asyncio.to_thread(open, partial, "wb")

        def absorb(chunk: bytes) -> None:  # on a worker thread: hashlib and write release the GIL
            h.update(chunk)
            out.write(chunk)

        # One chunk is hashed and written while the next one arrives; at most two are held.
        writing: asyncio.Future[None] | None = None
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise TooLarge(max_bytes)
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(asyncio.to_thread(absorb, chunk))
                if writing is not None:
                    await writing
            finally:
                if writing is not None and not writing.done():
                    await asyncio.wait([writing])  # the thread finishes with the file before it closes
                await asyncio.to_thread(out.close)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return Written(size, base64.b64encode(h.digest()).decode("ascii"))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        try:
            f = await asyncio.to_thread(open, self._path(key), "rb")
        except FileNotFoundError:
            raise NotFound(key) from None
        return self._chunks(f, start, end)

    async def _chunks(self, f: BinaryIO, start: int, end: int | None) -> AsyncIterator[bytes]:
        left = None if end is None else max(0, end - start)

        def next_chunk() -> bytes:
            nonlocal left
            chunk = f.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if left is not None:
                left -= len(chunk)
            return chunk

        # The next chunk is read while the caller sends this one: at most two are held.
        reading: asyncio.Future[bytes] | None = None
        try:
            await asyncio.to_thread(f.seek, start)
            reading = asyncio.ensure_future(asyncio.to_thread(next_chunk))
            while True:
                chunk = await reading
                reading = None
                if not chunk:
                    return
                if left is None or left > 0:
                    reading = asyncio.ensure_future(asyncio.to_thread(next_chunk))
                yield chunk
                if reading is None:
                    return
        finally:
            if reading is not None:
                await asyncio.wait([reading])  # the thread finishes with the file before it closes
            await asyncio.to_thread(f.close)

    async def size(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self._path(key).stat)).st_size
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    def download_url(self, key: str, expires_seconds: int, content_type: str | None = None) -> str | None:
        return None

    async def start_multipart(self, key: str, content_type: str | None) -> str:
        raise Unsupported("direct multipart uploads need the S3 backend; local disk takes uploads through Ripple")

    def part_url(self, key: str, upload_id: str, number: int, expires_seconds: int) -> str:
        raise Unsupported("direct multipart uploads need the S3 backend")

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> None:
        raise Unsupported("direct multipart uploads need the S3 backend")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        raise Unsupported("direct multipart uploads need the S3 backend")
