"""Snapshot export and import in Convex's ZIP layout (docs/import-export.md).

A snapshot holds `_tables/documents.jsonl` (one `{"name", "id"}` line per table),
`<table>/documents.jsonl` per table (one document a line, with `_id` and `_creationTime`),
`_storage/documents.jsonl` (the stored files' metadata) and `_storage/<id>` (their bytes).
Values are Convex's encoded JSON, which Convex's own import reads too.

An import writes everything in ONE transaction through a system `DatabaseWriter`: each document
is validated against the schema and its index keys and search postings written as for any
insert, 1,000 documents to a statement (server/core/bulk_writes.py; a --replace deletes the
same way); a line that fails refuses the whole import, named by file, line and field. A file's
bytes go to the blob store first (each with a pending-upload row, as uploads do: the sweeper
removes them if the process dies) and are removed again when the transaction fails. What an
import reads (the plan of tables and their lines) is server/core/snapshot_read.py.

Ids: a Ripple id embeds its table's number. An `_id` that is a valid id of the same table here
is kept verbatim; any other (a Convex id, or a table numbered differently) gets a new id, and
every string in the imported documents equal to an old id is rewritten to the new one.
"""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

import orjson

from server.core import bulk_writes, keys, sql
from server.core.database import Catalog, decode_doc
from server.core.documents import DatabaseWriter
from server.core.export_json import NotInt64, from_uniform, to_uniform
from server.core.ids import new_id, table_number_of
from server.core.runtime import Runtime
from server.core.schema import BY_CREATION_TIME
from server.core.snapshot_read import ImportRefused, Plan, Source
from server.core.storage.blobs import CHUNK_BYTES, Written
from server.core.system_tables import STORAGE, UNREADABLE
from server.core.transaction import Transaction
from server.core.values import from_convex_json
from server.errors import InvalidIdError, RippleError

MODES = ("empty", "append", "replace")  # what an import does with documents already there
_STORAGE_FIELDS = ("size", "sha256", "contentType")
EXPORT_BATCH = 1000  # rows fetched, and lines written, at a time
PROGRESS_EVERY = 10_000  # documents between two progress reports of an import
Report = Callable[[dict[str, Any]], None]


# -- export -----------------------------------------------------------------------------------

def _line(value: Any) -> bytes:
    return orjson.dumps(value) + b"\n"


async def export_zip(runtime: Runtime, out: IO[bytes]) -> dict[str, int]:
    """Write the user tables and the stored files, as of one snapshot, to `out`; counts by table.
    Rows come through a cursor in batches; compressing and writing run on a worker thread."""
    catalog = runtime.catalog
    tables = sorted(name for name in catalog.by_name if not name.startswith("_"))
    counts: dict[str, int] = {}
    snap = await runtime.db.snapshot()
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("README.md", "A Ripple snapshot in Convex's export layout: <table>/documents.jsonl per "
                             "table, _storage/ holding the files. Import it with `ripple import`.\n")
            archive.writestr("_tables/documents.jsonl", b"".join(
                _line({"name": name, "id": catalog.by_name[name].number}) for name in tables))
            for name in tables:
                archive.writestr(f"{name}/generated_schema.jsonl", _line("uniform"))
            for name in [*tables, STORAGE.name]:
                with archive.open(f"{name}/documents.jsonl", "w") as entry:
                    counts[name] = await _write_rows(snap.conn, catalog.by_name[name].sql.scan_all, entry,
                                                     name == STORAGE.name)
            async for row in snap.conn.cursor(catalog.by_name[STORAGE.name].sql.scan_all, prefetch=EXPORT_BATCH):
                with archive.open(f"_storage/{row['id']}", "w") as entry:
                    async for chunk in await runtime.files.store.read(row["id"]):
                        await asyncio.to_thread(entry.write, chunk)
    finally:
        await snap.close()
    return counts


async def _write_rows(conn: Any, statement: str, entry: IO[bytes], storage: bool) -> int:
    """A table's rows as documents.jsonl lines (`_storage`: the files' metadata); how many."""
    count, batch = 0, []
    async for row in conn.cursor(statement, prefetch=EXPORT_BATCH):
        doc = row["doc"]
        if storage:
            doc = {k: int(doc[k]) if k == "size" else doc[k] for k in _STORAGE_FIELDS if k in doc}
        else:
            doc = to_uniform(doc)
        batch.append(_line({"_id": row["id"], "_creationTime": row["creation_time"], **doc}))
        count += 1
        if len(batch) >= EXPORT_BATCH:
            await asyncio.to_thread(entry.write, b"".join(batch))
            batch = []
    await asyncio.to_thread(entry.write, b"".join(batch))
    return count


# -- importing --------------------------------------------------------------------------------

def _keep_or_draw(doc_id: Any, number: int) -> str:
    try:
        if table_number_of(doc_id) == number:
            return str(doc_id)
    except InvalidIdError:
        pass
    return new_id(number)


def _remap(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [_remap(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _remap(v, ids) for k, v in value.items()}
    return value


def _creation_time(where: str, raw: dict[str, Any]) -> float | None:
    value = raw.get("_creationTime")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ImportRefused(f"{where}: field _creationTime must be a number (milliseconds), not {value!r}")
    return float(value)


def _ids(plan: Plan, catalog: Catalog, mode: str) -> tuple[dict[str, str], dict[str, int]]:
    """First pass: every `_id` in the import -> the id it gets here, and the documents per table.
    Replacing or appending, a file gets a new id: its bytes are written before the transaction,
    so they must not land on a file that exists (replacing: whose bytes are removed once the
    import commits)."""
    ids: dict[str, str] = {}
    totals: dict[str, int] = {}
    sources = [*plan.tables, *([plan.storage] if plan.storage else [])]
    for source in sources:
        number = catalog.by_name[source.table].number
        for where, raw in source.lines():
            totals[source.table] = totals.get(source.table, 0) + 1
            old = raw.get("_id")
            if old is None:
                continue
            if not isinstance(old, str):
                raise ImportRefused(f"{where}: field _id must be a string, not {old!r}")
            if old in ids:
                raise ImportRefused(f"{where}: _id {old} appears twice in the import")
            fresh = mode != "empty" and source is plan.storage
            ids[old] = new_id(number) if fresh else _keep_or_draw(old, number)
    return ids, totals


async def _chunks(archive: zipfile.ZipFile, entry: str) -> AsyncIterator[bytes]:
    with archive.open(entry) as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK_BYTES):
            yield chunk


async def _put_blobs(runtime: Runtime, plan: Plan, ids: dict[str, str]) -> dict[str, tuple[str, Written, Any]]:
    """The files' bytes into the blob store: new key -> (where, what was written, its metadata)."""
    written: dict[str, tuple[str, Written, Any]] = {}
    if plan.storage is None:
        return written
    assert plan.archive is not None
    for where, raw in plan.storage.lines():
        old = raw.get("_id")
        entry = plan.blobs.get(str(old))
        if old is None or entry is None:
            raise ImportRefused(f"{where}: the file {old} has no bytes in the snapshot (_storage/{old})")
        key = ids[old]
        async with runtime.db.acquire() as conn:
            await conn.execute(sql.BEGIN_UPLOAD, key)
        written[key] = (where, Written(0, ""), raw)  # discarded on failure even if put fails
        result = await runtime.files.store.put(key, _chunks(plan.archive, entry))
        if raw.get("sha256") not in (None, result.sha256):
            raise ImportRefused(f"{where}: the bytes of {old} do not have the sha256 its metadata gives")
        written[key] = (where, result, raw)
    return written


async def _clear_or_check(writer: DatabaseWriter, tx: Transaction, runtime: Runtime, table: str, mode: str) -> None:
    info = runtime.catalog.by_name[table]
    if mode == "append":
        return
    rows = await tx.execute("fetch", info.sql.scan_all)
    if rows and mode == "empty":
        raise ImportRefused(f"table {table} already has documents; import with --replace to replace them "
                            "or --append (single tables) to add to them")
    if table == STORAGE.name:
        for row in rows:
            await runtime.files.delete_in(writer, tx, row["id"])
        return
    for start in range(0, len(rows), bulk_writes.BATCH):
        await bulk_writes.delete_staged(tx, [writer.staged_delete(info, r["id"], r["creation_time"], r["doc"])
                                             for r in rows[start:start + bulk_writes.BATCH]])


Lines = list[tuple[str, dict[str, Any]]]


async def _write_batch(writer: DatabaseWriter, tx: Transaction, source: Source, batch: Lines, ids: dict[str, str],
                       mode: str) -> None:
    """Documents of `source`'s table, in a few statements (bulk_writes.py); a line that cannot
    be written is refused by its place in the file, the first such line in the batch."""
    info = tx.catalog.by_name[source.table]
    taken: set[str] = set()
    if mode == "append":
        taken = await bulk_writes.present(tx, info, [ids[raw["_id"]] for _, raw in batch if raw.get("_id") is not None])
    staged = []
    for where, raw in batch:
        old = raw.get("_id")
        if old is not None and ids[old] in taken:
            raise ImportRefused(f"{where}: table {source.table} already has a document {ids[old]}")
        fields = {k: v for k, v in raw.items() if k not in ("_id", "_creationTime")}
        try:
            value = _remap(from_convex_json(from_uniform(fields) if source.uniform else fields), ids)
            staged.append(writer.staged_insert(source.table, value, doc_id=None if old is None else ids[old],
                                               creation_time=_creation_time(where, raw)))
        except ImportRefused:
            raise
        except (RippleError, NotInt64) as exc:
            raise ImportRefused(f"{where} (table {source.table}): {exc}") from None
    await bulk_writes.insert_staged(tx, staged)


async def run_import(runtime: Runtime, plan: Plan, mode: str, report: Report | None = None) -> dict[str, int]:
    """Import `plan` all or nothing; the documents written, by table. `report` hears how far it
    got: `{"documents": {table: n}}` once the file is read, `{"table", "written"}` every
    PROGRESS_EVERY documents and at each table's end (from 0 again if the transaction is retried
    after a conflict), `{"phase": "committing"}`. Progress promises nothing: only the return
    (committed) or an exception (nothing written) says how it ended."""
    if mode not in MODES:
        raise ImportRefused(f"mode {mode!r} is not one of {', '.join(MODES)}")
    catalog = runtime.catalog
    say = report or (lambda line: None)
    ids, totals = _ids(plan, catalog, mode)
    say({"documents": totals})
    blobs: dict[str, tuple[str, Written, Any]] = {}
    try:
        blobs = await _put_blobs(runtime, plan, ids)

        async def body(writer: DatabaseWriter, tx: Transaction) -> dict[str, int]:
            tx.unlimited = True
            counts: dict[str, int] = {}
            tables = [s.table for s in plan.tables] + ([STORAGE.name] if plan.storage else [])
            for table in tables:
                await _clear_or_check(writer, tx, runtime, table, mode)
            for key, (where, result, raw) in blobs.items():
                await tx.execute("fetchval", sql.FINISH_UPLOAD, key)
                doc: dict[str, Any] = {"size": result.size, "sha256": result.sha256}
                if raw.get("contentType"):
                    doc["contentType"] = raw["contentType"]
                await writer.insert(STORAGE.name, doc, doc_id=key, creation_time=_creation_time(where, raw))
            if plan.storage:
                counts[STORAGE.name] = len(blobs)
            for source in plan.tables:
                n, batch = 0, []
                for line in source.lines():
                    batch.append(line)
                    if len(batch) == bulk_writes.BATCH or (n + len(batch)) % PROGRESS_EVERY == 0:
                        await _write_batch(writer, tx, source, batch, ids, mode)
                        n, batch = n + len(batch), []
                        if n % PROGRESS_EVERY == 0:
                            say({"table": source.table, "written": n})
                await _write_batch(writer, tx, source, batch, ids, mode)
                n += len(batch)
                say({"table": source.table, "written": n})
                counts[source.table] = counts.get(source.table, 0) + n
            say({"phase": "committing"})
            return counts

        return await runtime.system_transaction(body)
    except BaseException:
        for key in blobs:
            await asyncio.shield(runtime.files.discard_upload(key))
        raise


def table_names(catalog: Catalog) -> list[str]:
    """What `ripple data` lists: the user tables, then the system tables functions may read."""
    user = sorted(n for n in catalog.by_name if not n.startswith("_"))
    return user + sorted(n for n in catalog.by_name if n.startswith("_") and n not in UNREADABLE)


async def page(runtime: Runtime, table: str, limit: int, newest_first: bool) -> list[dict[str, Any]]:
    """The first `limit` documents of `table` by creation time, in one snapshot."""
    info = runtime.catalog.table(table)
    statement = info.sql.range[(BY_CREATION_TIME, newest_first)]
    async with runtime.db.acquire() as conn:
        rows = await conn.fetch(statement, b"", keys.AFTER_PREFIX, limit)
    return [decode_doc(r["id"], r["creation_time"], r["doc"]) for r in rows]
