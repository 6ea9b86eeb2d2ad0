"""`ctx.storage`, as Convex's StorageReader (queries), StorageWriter (mutations) and
StorageActionWriter (actions), plus direct multipart uploads in actions (docs/storage.md).

In queries and mutations the `_storage` document is read in the function's transaction, so a
live query's `get_url` result changes when the file is deleted; a mutation's `delete` removes the
document in its transaction and the bytes only after it commits. In actions each call is a
transaction of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any

from server.core.database import Catalog
from server.core.documents import DatabaseWriter, SystemReader
from server.core.ids import table_number_of
from server.core.storage.blobs import NotFound, Part
from server.core.storage.files import PART_URL_SECONDS, Files, StoredFile, hex_sha256
from server.core.system_tables import STORAGE
from server.core.transaction import Transaction
from server.errors import InvalidIdError, RippleUsageError

MAX_READ_BYTES = 64 * 1024 * 1024  # what StoredBlob.read() returns at most; iterate for more


def checked_id(catalog: Catalog, storage_id: Any, verb: str, where: str = "ctx.storage.") -> str:
    """`storage_id` if it is an id of `_storage`; InvalidIdError naming what it is otherwise,
    after `where` + `verb` (the function's call, or the HTTP route)."""
    try:
        number = table_number_of(storage_id)
    except InvalidIdError:
        raise InvalidIdError(f"{where}{verb}: {storage_id!r} is not a storage id") from None
    if number != STORAGE.number:
        info = catalog.by_number.get(number)
        what = f"a document id of table {info.name}" if info is not None else "an id of no table here"
        raise InvalidIdError(f"{where}{verb}: {storage_id} is {what}, not a storage id (an Id[\"_storage\"])")
    return str(storage_id)


def metadata(file: StoredFile) -> dict[str, Any]:
    """Convex's FileMetadata: sha256 in hex (the `_storage` document holds it in base64)."""
    return {"storageId": file.storage_id, "sha256": hex_sha256(file.sha256), "size": file.size,
            "contentType": file.content_type}


class StorageReader:
    """`ctx.storage` in queries."""

    def __init__(self, tx: Transaction, files: Files) -> None:
        self._tx = tx
        self._files = files

    async def _file(self, storage_id: Any, verb: str) -> StoredFile | None:
        key = checked_id(self._tx.catalog, storage_id, verb)
        doc = await SystemReader(self._tx).get(STORAGE.name, key)
        return None if doc is None else StoredFile.of(doc)

    async def get_url(self, storage_id: str) -> str | None:
        """A URL serving the file, or None when there is no such file (deleted)."""
        file = await self._file(storage_id, "get_url")
        return None if file is None else self._files.url(file.storage_id)

    async def get_metadata(self, storage_id: str) -> dict[str, Any] | None:
        """{storageId, sha256 (hex), size, contentType}, or None. As in Convex, prefer
        `ctx.db.system.get(storage_id)`, which gives the `_storage` document."""
        file = await self._file(storage_id, "get_metadata")
        return None if file is None else metadata(file)


class StorageWriter(StorageReader):
    """`ctx.storage` in mutations."""

    async def generate_upload_url(self) -> str:
        """A URL a client POSTs a file's bytes to (once, within an hour); the answer is
        `{"storageId": ...}`."""
        return await self._files.upload_url()

    async def delete(self, storage_id: str) -> None:
        """Delete the file if this mutation commits: its document now, its bytes after the commit."""
        key = checked_id(self._tx.catalog, storage_id, "delete")
        await self._files.delete_in(DatabaseWriter(self._tx, system=True), self._tx, key)


class StoredBlob:
    """A stored file's bytes, read from the store as they are consumed: `async for chunk in
    blob` (chunks of at most 1 MiB), or `await blob.read()` for small files. One pass."""

    def __init__(self, file: StoredFile, chunks: AsyncIterator[bytes]) -> None:
        self.storage_id = file.storage_id
        self.size = file.size
        self.sha256 = file.sha256
        self.content_type = file.content_type
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def read(self) -> bytes:
        if self.size > MAX_READ_BYTES:
            raise RippleUsageError(f"{self.storage_id} holds {self.size} bytes: more than read() returns "
                                   f"({MAX_READ_BYTES} bytes); iterate over it (async for chunk in blob)")
        return b"".join([chunk async for chunk in self._chunks])


class StorageActionWriter:
    """`ctx.storage` in actions: each call commits on its own."""

    def __init__(self, files: Files, catalog: Callable[[], Catalog]) -> None:
        self._files = files
        self._catalog = catalog

    async def _file(self, storage_id: Any, verb: str) -> StoredFile | None:
        return await self._files.lookup(checked_id(self._catalog(), storage_id, verb))

    async def get_url(self, storage_id: str) -> str | None:
        file = await self._file(storage_id, "get_url")
        return None if file is None else self._files.url(file.storage_id)

    async def get_metadata(self, storage_id: str) -> dict[str, Any] | None:
        file = await self._file(storage_id, "get_metadata")
        return None if file is None else metadata(file)

    async def generate_upload_url(self) -> str:
        return await self._files.upload_url()

    async def delete(self, storage_id: str) -> None:
        await self._files.delete(checked_id(self._catalog(), storage_id, "delete"))

    async def store(self, data: bytes | AsyncIterable[bytes], content_type: str | None = None, *,
                    sha256: str | None = None) -> str:
        """Store `data` (bytes, or an async iterable of bytes, streamed) as a new file; its
        storage id. `sha256` (hex or base64): refuse the bytes unless they have that digest."""
        if not isinstance(data, (bytes, bytearray, memoryview)) and not isinstance(data, AsyncIterable):
            raise RippleUsageError(f"ctx.storage.store takes bytes or an async iterable of bytes, not {type(data).__name__}")
        return await self._files.store_bytes(data, content_type, sha256)

    async def get(self, storage_id: str) -> StoredBlob | None:
        """The file's bytes as a StoredBlob, or None when there is no such file."""
        file = await self._file(storage_id, "get")
        if file is None:
            return None
        try:
            chunks = await self._files.store.read(file.storage_id)
        except NotFound:  # deleted since
            return None
        return StoredBlob(file, chunks)

    # -- direct multipart uploads (S3 backend) ------------------------------------------------

    async def start_multipart_upload(self, *, parts: int, content_type: str | None = None,
                                     expires_seconds: int = PART_URL_SECONDS) -> dict[str, Any]:
        """Begin an upload that goes straight to the bucket in `parts` parts (each at least
        5 MiB but the last, as S3 requires): {"storageId", "uploadId", "partUrls"}. A client PUTs
        part n to partUrls[n-1] and keeps each response's ETag header."""
        return await self._files.start_multipart(content_type, parts, expires_seconds)

    async def complete_multipart_upload(self, storage_id: str, upload_id: str, parts: list[Mapping[str, Any]]) -> str:
        """Assemble the parts ([{"partNumber": n, "etag": "..."}]) and register the file (size
        and sha256 read back from the bucket); its storage id."""
        key = checked_id(self._catalog(), storage_id, "complete_multipart_upload")
        try:
            checked = [Part(int(p["partNumber"]), str(p["etag"])) for p in parts]
        except (KeyError, TypeError, ValueError):
            raise RippleUsageError('complete_multipart_upload: parts are [{"partNumber": n, "etag": "..."}]') from None
        return await self._files.complete_multipart(key, upload_id, checked)

    async def abort_multipart_upload(self, storage_id: str, upload_id: str) -> None:
        key = checked_id(self._catalog(), storage_id, "abort_multipart_upload")
        await self._files.abort_multipart(key, upload_id)
