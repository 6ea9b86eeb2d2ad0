"""The deployment's stored files: bytes in the blob store, one `_storage` document each.

Order of writes, so that nothing registered lacks its bytes and nothing left behind is lost track
of: an upload first records its key in `_ripple_storage_pending` (reason 'upload'), then writes
the bytes, then inserts the `_storage` document and drops the pending row in one transaction.
Deleting a file deletes its document and records a pending 'delete' row in the caller's
transaction; after it commits, the bytes are removed and the row dropped. Whatever a crash or a
failed removal leaves behind, a row says so, and `sweep` (every process, every
SWEEP_SECONDS) finishes it: deletions older than DELETE_RETRY_SECONDS and uploads older than
UPLOAD_ABANDONED_SECONDS lose their bytes (an upload still running then fails to register).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from server.config import Config
from server.core import sandbox, sql
from server.core.database import Database
from server.core.documents import DatabaseWriter
from server.core.ids import new_id
from server.core.storage import tokens
from server.core.storage.backend import open_store
from server.core.storage.blobs import (
    CHUNK_BYTES,
    BlobStore,
    Part,
    Unsupported,
    Written,
    digest,
)
from server.core.system_tables import STORAGE
from server.core.transaction import Transaction
from server.errors import RippleUsageError

log = logging.getLogger("ripple.storage")

T = TypeVar("T")
SystemTransaction = Callable[[Callable[[DatabaseWriter, Transaction], Awaitable[T]]], Awaitable[T]]

SWEEP_SECONDS = 60.0
DELETE_RETRY_SECONDS = 60.0  # a deletion whose after-commit removal has not happened by then
UPLOAD_ABANDONED_SECONDS = 86_400.0  # an upload (or direct multipart upload) not registered by then
SWEEP_BATCH = 100
DOWNLOAD_URL_SECONDS = 3600  # presigned GET URLs the S3 backend redirects to
PART_URL_SECONDS = 3600


def blob_store(config: Config) -> BlobStore:
    """The configured backend: local disk or S3 (storage/backend.py)."""
    return open_store(config.storage, config.app_dir)


class UploadFailed(RippleUsageError):
    """An upload that stored nothing, with the HTTP status and code the upload route answers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Abandoned(Exception):
    """The sweeper gave the upload up before it registered: its bytes are being removed."""


async def rechunk(source: AsyncIterable[bytes], size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """`source` regrouped into chunks of at least `size` bytes (at most `size` plus one piece;
    the last may be shorter): an HTTP body arrives in pieces of a few KiB, each of which would
    otherwise cost the store a worker-thread hop."""
    pieces: list[bytes] = []
    held = 0
    async for piece in source:
        pieces.append(piece)
        held += len(piece)
        if held >= size:  # joined once: one copy of each byte (cutting exact sizes made two)
            yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces, held = [], 0
    if pieces:
        yield b"".join(pieces)


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start:start + CHUNK_BYTES]


def hex_sha256(b64: str) -> str:
    """Convex's getMetadata gives the digest in hex; `_storage.sha256` holds it in base64."""
    return base64.b64decode(b64).hex()


@dataclass(frozen=True)
class StoredFile:
    """A `_storage` document, as the HTTP route and actions read it."""

    storage_id: str
    size: int
    sha256: str  # base64
    content_type: str | None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> StoredFile:
        return cls(doc["_id"], int(doc["size"]), doc["sha256"], doc.get("contentType"))


class Files:
    """File storage for one deployment: `Runtime.files`."""

    def __init__(self, db: Database, store: BlobStore, config: Config, transact: SystemTransaction[Any]) -> None:
        self.db = db
        self.store = store
        self.config = config
        self._transact = transact
        self._secret: bytes | None = None
        self._removals: set[asyncio.Task[None]] = set()

    # -- URLs ---------------------------------------------------------------------------------

    def url(self, storage_id: str) -> str:
        """Stable: a live query's result holding it does not change from one run to the next."""
        return f"{self.config.base_url}/api/storage/{storage_id}"

    async def secret(self) -> bytes:
        while self._secret is None:
            with sandbox.runtime_io():  # read once per process, possibly from inside a mutation
                async with self.db.acquire() as conn:
                    value = await conn.fetchval(sql.STORAGE_SECRET, secrets.token_hex(32))
            # None: another process drew it concurrently, after this statement's snapshot.
            if value is not None:
                self._secret = bytes.fromhex(value)
        return self._secret

    async def upload_url(self) -> str:
        token = tokens.sign(await self.secret(), time.time())
        return f"{self.config.base_url}/api/storage/upload?token={token}"

    # -- writing ------------------------------------------------------------------------------

    async def receive(self, token: str | None, body: AsyncIterable[bytes], content_type: str | None) -> str:
        """An upload through an upload URL: the token checked and used up, the body stored.
        Raises BadToken, UploadFailed (nothing stored), or the body's own error (a client gone)."""
        checked = tokens.verify(await self.secret(), token, time.time())
        key = new_id(STORAGE.number)
        async with self.db.acquire() as conn:
            if await conn.fetchval(sql.USE_UPLOAD_TOKEN, checked.nonce, checked.expires, key) is None:
                raise tokens.BadToken("UploadUrlUsed", "this upload URL was used already; each upload needs a new "
                                      "one from ctx.storage.generate_upload_url()")
        return await self._write(key, rechunk(body), content_type, self.config.storage.max_upload_bytes,
                                 refuse_empty=True)

    async def store_bytes(self, data: bytes | AsyncIterable[bytes], content_type: str | None,
                          sha256: str | None = None) -> str:
        """An action's ctx.storage.store. `sha256` (hex or base64): the upload is refused, and
        nothing kept, unless the bytes have that digest."""
        key = new_id(STORAGE.number)
        await self._pending(sql.BEGIN_UPLOAD, key)
        source = chunks_of(data) if isinstance(data, (bytes, bytearray, memoryview)) else rechunk(data)
        return await self._write(key, source, content_type, None, sha256)

    async def _write(self, key: str, chunks: AsyncIterator[bytes], content_type: str | None, limit: int | None,
                     expected: str | None = None, *, refuse_empty: bool = False) -> str:
        try:
            written = await self.store.put(key, chunks, limit, content_type)
            if written.size == 0 and refuse_empty:
                raise UploadFailed(400, "EmptyUpload", "the upload has no body; POST the file's bytes")
            if expected is not None and expected not in (written.sha256, hex_sha256(written.sha256)):
                raise RippleUsageError(f"ctx.storage.store: the bytes' sha256 is {hex_sha256(written.sha256)}, "
                                       f"not {expected}; nothing was stored")
            await self._register(key, written, content_type)
        except BaseException:
            await asyncio.shield(self._discard(key, "upload"))
            raise
        return key

    async def _register(self, key: str, written: Written, content_type: str | None) -> None:
        async def body(writer: DatabaseWriter, tx: Transaction) -> None:
            if await tx.execute("fetchval", sql.FINISH_UPLOAD, key) is None:
                raise Abandoned(f"upload {key} was given up by the sweeper")
            doc: dict[str, Any] = {"size": written.size, "sha256": written.sha256}
            if content_type:
                doc["contentType"] = content_type
            await writer.insert(STORAGE.name, doc, doc_id=key)

        await self._transact(body)

    async def _pending(self, statement: str, *args: Any) -> Any:
        async with self.db.acquire() as conn:
            return await conn.fetchval(statement, *args)

    async def discard_upload(self, key: str) -> None:
        """Remove the bytes of an upload that will not be registered (an import that failed)."""
        await self._discard(key, "upload")

    async def _discard(self, key: str, reason: str) -> None:
        """Remove bytes that never got (or no longer have) a document, then their pending row.
        A failure leaves the row for the sweeper."""
        try:
            await self.store.delete(key)
            await self._pending(sql.FORGET_PENDING, key, reason)
        except Exception:
            log.exception("removing the bytes of %s failed; the storage sweeper will retry", key)

    # -- deleting -----------------------------------------------------------------------------

    async def delete_in(self, writer: DatabaseWriter, tx: Transaction, storage_id: str) -> None:
        """Delete a file's document in `tx`; its bytes go once `tx` committed (never otherwise)."""
        if await writer.system.get(STORAGE.name, storage_id) is None:
            raise RippleUsageError(f"ctx.storage.delete: no stored file {storage_id} (deleted already?)")
        await writer.delete(STORAGE.name, storage_id)
        await tx.execute("execute", sql.MARK_DELETED, storage_id)
        tx.after_commit.append(lambda: self._remove_soon(storage_id))

    def _remove_soon(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self._discard(key, "delete"))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def delete(self, storage_id: str) -> None:
        """An action's ctx.storage.delete: a transaction of its own."""

        async def body(writer: DatabaseWriter, tx: Transaction) -> None:
            await self.delete_in(writer, tx, storage_id)

        await self._transact(body)

    async def removals_done(self) -> None:
        """Wait for the after-commit removals under way (shutdown, tests)."""
        while self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)

    # -- reading ------------------------------------------------------------------------------

    async def lookup(self, storage_id: str) -> StoredFile | None:
        """The file's document, read outside any function (HTTP route, actions)."""

        async def body(writer: DatabaseWriter, tx: Transaction) -> dict[str, Any] | None:
            return await writer.system.get(STORAGE.name, storage_id)

        doc = await self._transact(body)
        return None if doc is None else StoredFile.of(doc)

    # -- direct multipart uploads (S3) --------------------------------------------------------

    async def start_multipart(self, content_type: str | None, parts: int, expires_seconds: int) -> dict[str, Any]:
        if not 1 <= parts <= 10_000:
            raise RippleUsageError(f"a multipart upload has 1 to 10000 parts, not {parts}")
        key = new_id(STORAGE.number)
        await self._pending(sql.BEGIN_UPLOAD, key)
        try:
            upload_id = await self.store.start_multipart(key, content_type)
        except Unsupported as exc:
            await self._pending(sql.FORGET_PENDING, key, "upload")
            raise RippleUsageError(f"direct multipart uploads need the S3 storage backend (RIPPLE_STORAGE=s3); "
                                   f"with {self.store.name} storage, upload through ctx.storage.generate_upload_url() "
                                   f"({exc})") from None
        await self._pending(sql.SET_UPLOAD_ID, key, upload_id, content_type)
        urls = [self.store.part_url(key, upload_id, n, expires_seconds) for n in range(1, parts + 1)]
        return {"storageId": key, "uploadId": upload_id, "partUrls": urls}

    async def _check_upload(self, storage_id: str, upload_id: str) -> str | None:
        """The content type the upload was started with, once it is one under way."""
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(sql.UPLOAD_ID, storage_id)
        if row is None or not upload_id or row["upload_id"] != upload_id:
            raise RippleUsageError(f"no multipart upload {upload_id!r} under way for {storage_id} "
                                   "(completed, aborted, or given up after "
                                   f"{UPLOAD_ABANDONED_SECONDS / 3600:g} hours)")
        content_type: str | None = row["content_type"]
        return content_type

    async def complete_multipart(self, storage_id: str, upload_id: str, parts: list[Part]) -> str:
        content_type = await self._check_upload(storage_id, upload_id)
        await self.store.complete_multipart(storage_id, upload_id, parts)
        try:
            written = await digest(self.store, storage_id)
            await self._register(storage_id, written, content_type)
        except BaseException:
            await asyncio.shield(self._discard(storage_id, "upload"))
            raise
        return storage_id

    async def abort_multipart(self, storage_id: str, upload_id: str) -> None:
        await self._check_upload(storage_id, upload_id)
        await self.store.abort_multipart(storage_id, upload_id)
        await self._pending(sql.FORGET_PENDING, storage_id, "upload")

    # -- what crashes left behind -------------------------------------------------------------

    async def sweep(self, delete_after: float = DELETE_RETRY_SECONDS,
                    upload_after: float = UPLOAD_ABANDONED_SECONDS) -> int:
        """Remove the bytes of deletions and abandoned uploads left behind; how many."""
        done = 0
        while True:
            async with self.db.acquire() as conn:
                rows = await conn.fetch(sql.CLAIM_LEFT_BEHIND, delete_after, upload_after, SWEEP_BATCH,
                                        SWEEP_SECONDS * 5)
                await conn.execute(sql.PRUNE_UPLOAD_TOKENS)
            for row in rows:
                if row["upload_id"]:
                    try:
                        await self.store.abort_multipart(row["key"], row["upload_id"])
                    except Exception:
                        log.warning("aborting the multipart upload of %s failed", row["key"], exc_info=True)
                await self._discard(row["key"], "delete")
            done += len(rows)
            if len(rows) < SWEEP_BATCH:
                return done

    async def sweep_forever(self) -> None:
        while True:
            swept = await self.sweep()
            if swept:
                log.info("storage sweeper removed the bytes of %d files left behind", swept)
            await asyncio.sleep(SWEEP_SECONDS)
