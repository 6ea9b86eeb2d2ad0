"""The file storage routes (docs/storage.md): `POST /api/storage/upload?token=...` takes a file
through an upload URL, `GET /api/storage/<id>` serves one.

Uploads are streamed to the blob store as they arrive (the server's request body limit for the
HTTP API does not apply; StorageConfig.max_upload_bytes does). Downloads from local disk are
streamed with Range, ETag and If-None-Match; with S3 the answer is a redirect to a presigned
URL, so the bytes never pass through Ripple and the URL functions hand out stays stable.
"""

from __future__ import annotations

import logging
import re

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from server.api.http_api import error_response, json_response
from server.core.runtime import Runtime
from server.core.storage.api import checked_id
from server.core.storage.blobs import NotFound, TooLarge
from server.core.storage.files import DOWNLOAD_URL_SECONDS, Files, StoredFile, UploadFailed
from server.core.storage.tokens import BadToken
from server.errors import DatabaseUnavailable, InvalidIdError, shown

log = logging.getLogger("ripple.storage")

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Unsatisfiable(Exception):
    """A Range past the end of the file: 416."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) a Range header asks for; None to send the whole file (no header, one
    Ripple does not serve: several ranges, another unit, bad syntax, as RFC 9110 allows).
    Unsatisfiable for a range past the end."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        count = int(last)
        if count == 0:
            raise Unsatisfiable()
        return max(0, size - count), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or (last != "" and int(last) < start):
        raise Unsatisfiable()
    return start, end


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


class StorageRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def files(self) -> Files:
        return self.runtime.files

    async def upload(self, request: Request) -> Response:
        limit = self.runtime.config.storage.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return error_response(400, "BadRequest", "Content-Length is not a number")
            if int(declared) > limit:
                return error_response(413, "FileTooLarge", f"the file ({declared} bytes) is larger than the upload "
                                      f"limit of {limit} bytes (RIPPLE_STORAGE_MAX_UPLOAD_BYTES)")
            if int(declared) == 0:
                return error_response(400, "EmptyUpload", "the upload has no body; POST the file's bytes")
        content_type = request.headers.get("content-type") or None
        try:
            storage_id = await self.files.receive(request.query_params.get("token"), request.stream(),
                                                          content_type)
        except BadToken as exc:
            return error_response(403, exc.code, str(exc))
        except UploadFailed as exc:
            return error_response(exc.status, exc.code, str(exc))
        except TooLarge as exc:
            return error_response(413, "FileTooLarge", f"the file is larger than the upload limit of {exc.limit} "
                                  "bytes (RIPPLE_STORAGE_MAX_UPLOAD_BYTES); nothing was stored")
        except ClientDisconnect:
            log.info("a client disconnected during an upload; nothing was stored")
            return error_response(400, "ClientDisconnected", "the upload was cut off; nothing was stored")
        except DatabaseUnavailable as exc:
            return error_response(503, exc.code, exc.message)
        except OSError as exc:  # the blob store: S3 unreachable (ConnectionError), a full disk, ...
            log.error("an upload failed in the %s blob store; nothing was stored: %s", self.files.store.name, exc)
            return error_response(503, "StorageUnavailable", "file storage is unavailable; nothing was stored, try again")
        return json_response({"storageId": storage_id})

    async def download(self, request: Request) -> Response:
        storage_id = request.path_params["storage_id"]
        try:
            file = await self._file(storage_id)
        except InvalidIdError as exc:
            return error_response(400, "InvalidStorageId", str(exc))
        if file is None:
            return error_response(404, "FileNotFound", f"no stored file {shown(storage_id)} (deleted, or never uploaded)")
        presigned = self.files.store.download_url(file.storage_id, DOWNLOAD_URL_SECONDS, file.content_type)
        if presigned is not None:
            # A fresh URL each time: the one functions hand out stays the same, the bucket serves.
            return Response(status_code=302, headers={"location": presigned, "cache-control": "no-store"})
        return await self._serve(request, file)

    async def _file(self, storage_id: str) -> StoredFile | None:
        key = checked_id(self.runtime.catalog, storage_id, "/api/storage/<id>", where="GET ")
        file: StoredFile | None = await self.files.lookup(key)
        return file

    async def _serve(self, request: Request, file: StoredFile) -> Response:
        etag = f'"{file.sha256}"'
        headers = {
            "etag": etag,
            "accept-ranges": "bytes",
            "cache-control": "private, max-age=2592000, immutable",  # a storage id's bytes never change
            "content-type": file.content_type or "application/octet-stream",
        }
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        try:
            wanted = byte_range(request.headers.get("range"), file.size)
        except Unsatisfiable:
            return Response(status_code=416, headers={**headers, "content-range": f"bytes */{file.size}"})
        start, end = (0, file.size) if wanted is None else wanted
        status = 200 if wanted is None else 206
        if status == 206:
            headers["content-range"] = f"bytes {start}-{end - 1}/{file.size}"
        else:
            headers["digest"] = f"sha-256={file.sha256}"
        headers["content-length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        try:
            chunks = await self.files.store.read(file.storage_id, start, end)
        except NotFound:  # deleted since it was looked up
            return error_response(404, "FileNotFound", f"no stored file {file.storage_id}")
        return StreamingResponse(chunks, status_code=status, headers=headers)
