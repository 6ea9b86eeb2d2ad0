"""`GET /_ripple/export` (a snapshot ZIP) and `POST /_ripple/import` (a snapshot ZIP, or one
table's JSONL, JSON or CSV with `?table=&format=`; `?mode=empty|append|replace`), both behind
the admin key (docs/import-export.md). Both spool through a temporary file: the export is
written as of one snapshot before its first byte goes out, the import read twice (ids, then
documents), with its progress streamed as NDJSON to clients that ask for it."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import zipfile
from collections.abc import AsyncIterator
from typing import IO, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from server.api import http_api
from server.api.http_api import HttpError, error_response, json_response
from server.core import snapshot, snapshot_read
from server.core.runtime import Runtime
from server.core.snapshot_read import ImportRefused
from server.core.values import to_plain_json
from server.errors import redact

CHUNK = 1 << 20
NDJSON = "application/x-ndjson"
log = logging.getLogger("ripple")


MAX_DATA_PAGE = 1000


class SnapshotRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.imports: set[asyncio.Task[None]] = set()  # imports streaming progress, held until they end

    def _require_admin(self, request: Request) -> None:
        http_api.require_admin_header(request, self.runtime.config.admin_key, "export and import")

    async def export(self, request: Request) -> Response:
        try:
            self._require_admin(request)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        spool = tempfile.TemporaryFile()
        try:
            await snapshot.export_zip(self.runtime, spool)
            size = spool.tell()
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return StreamingResponse(_stream(spool), media_type="application/zip",
                                 headers={"Content-Length": str(size),
                                          "Content-Disposition": 'attachment; filename="snapshot.zip"'})

    async def data(self, request: Request) -> Response:
        """`GET /_ripple/data`: the tables, `{"tables": [...]}` (user tables, then the readable
        system ones). `GET /_ripple/data/{table}?limit=&order=`: a page of its documents, newest
        first unless `order=asc` (`ripple data`, as `npx convex data`)."""
        try:
            self._require_admin(request)
            table = request.path_params.get("table")
            if table is None:
                return json_response({"tables": snapshot.table_names(self.runtime.catalog)})
            limit = request.query_params.get("limit", "100")
            order = request.query_params.get("order", "desc")
            if not limit.isdigit() or not 1 <= int(limit) <= MAX_DATA_PAGE:
                raise HttpError(400, "BadLimit", f"limit must be a whole number from 1 to {MAX_DATA_PAGE}, not {limit!r}")
            if order not in ("asc", "desc"):
                raise HttpError(400, "BadOrder", f"order must be 'asc' or 'desc', not {order!r}")
            if table not in snapshot.table_names(self.runtime.catalog):
                raise HttpError(404, "TableNotFound", f"no table {table!r} to show (tables: "
                                f"{', '.join(snapshot.table_names(self.runtime.catalog))})")
            docs = await snapshot.page(self.runtime, table, int(limit), order == "desc")
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        return json_response({"documents": [to_plain_json(d) for d in docs]})

    async def import_(self, request: Request) -> Response:
        """The import, answered `{"imported": {...}}` when it has committed; or, for a client that
        sends `Accept: application/x-ndjson`, a stream of progress lines ending in that line or in
        `{"error": {"code", "message"}}` (refusals before the import starts, such as a wrong
        key or a body that is no ZIP, are plain 4xx answers either way)."""
        table = request.query_params.get("table")
        mode = request.query_params.get("mode", "empty")
        spool, streaming = tempfile.TemporaryFile(), False
        try:
            self._require_admin(request)
            async for piece in request.stream():
                await asyncio.to_thread(spool.write, piece)
            spool.seek(0)
            if table is None:
                try:
                    archive = zipfile.ZipFile(spool)
                except zipfile.BadZipFile:
                    raise ImportRefused("the body is not a ZIP file; a single table's file needs "
                                        "?table=<name>&format=jsonl|json|csv") from None
                plan = snapshot_read.snapshot_plan(archive, self.runtime.catalog)
            else:
                plan = snapshot_read.table_plan(table, request.query_params.get("format", "jsonl"), spool,
                                                self.runtime.catalog, request.query_params.get("name"))
            if NDJSON in request.headers.get("accept", ""):
                streaming = True  # the stream closes the spool
                return StreamingResponse(self._progress(plan, mode, spool), media_type=NDJSON)
            counts = await snapshot.run_import(self.runtime, plan, mode)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except ImportRefused as exc:
            return error_response(400, "ImportRefused", str(exc))
        finally:
            if not streaming:
                spool.close()
        return json_response({"imported": counts})

    async def _progress(self, plan: snapshot_read.Plan, mode: str, spool: IO[bytes]) -> AsyncIterator[bytes]:
        """The import as NDJSON lines. It runs as a task of its own, so that a client gone away
        mid-import changes nothing: the import still ends (committed, or not at all) as it would
        have for a client that waited, and is logged."""
        lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def run() -> None:
            try:
                counts = await snapshot.run_import(self.runtime, plan, mode, lines.put_nowait)
                log.info("import committed: %s", counts)
                lines.put_nowait({"imported": counts})
            except ImportRefused as exc:
                log.info("import refused, nothing written: %s", exc)
                lines.put_nowait({"error": {"code": "ImportRefused", "message": str(exc)}})
            except Exception as exc:  # never leak internals: the log has it under the request id
                message = redact(exc, "POST /_ripple/import", dev=self.runtime.config.dev)
                lines.put_nowait({"error": {"code": "InternalServerError", "message": message}})
            finally:
                spool.close()
                lines.put_nowait(None)

        task = asyncio.create_task(run(), name="ripple import")
        self.imports.add(task)
        task.add_done_callback(self.imports.discard)
        while (line := await lines.get()) is not None:
            yield orjson.dumps(line) + b"\n"


async def _stream(spool: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(spool.read, CHUNK):
            yield chunk
    finally:
        spool.close()
