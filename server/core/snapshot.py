"""Snapshot export and import in Convex's ZIP layout (docs/import-export.md).

A snapshot holds `_tables/documents.jsonl` (one `{"name", "id"}` line per table),
`<table>/documents.jsonl` per table (one document a line, with `_id` and `_creationTime`),
`_storage/documents.jsonl` (the stored files' metadata) and `_storage/<id>` (their bytes).
Values are Convex's encoded JSON, which Convex's own import reads too.

An import writes everything in ONE transaction through a system `DatabaseWriter`: each document
is validated against the schema and its index keys and search postings written as for any
insert; a line that fails refuses the whole import, named by file, line and field. A file's
bytes go to the blob store first (each with a pending-upload row, as uploads do: the sweeper
removes them if the process dies) and are removed again when the transaction fails.

Ids: a Ripple id embeds its table's number. An `_id` that is a valid id of the same table here
is kept verbatim; any other (a Convex id, or a table numbered differently) gets a new id, and
every string in the imported documents equal to an old id is rewritten to the new one.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import zipfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from server.core import keys, sql
from server.core.database import Catalog, decode_doc
from server.core.documents import DatabaseWriter
from server.core.export_json import NotInt64, from_uniform, to_uniform
from server.core.ids import new_id, table_number_of
from server.core.runtime import Runtime
from server.core.schema import BY_CREATION_TIME
from server.core.storage.blobs import CHUNK_BYTES, Written
from server.core.system_tables import STORAGE, UNREADABLE
from server.core.transaction import Transaction
from server.core.values import from_convex_json
from server.errors import InvalidIdError, RippleError, RippleUsageError

MODES = ("empty", "append", "replace")  # what an import does with documents already there
FORMATS = ("jsonl", "json", "csv")
_DOCUMENTS = re.compile(r"^([^/]+)/documents\.jsonl$")
_GENERATED_SCHEMA = "{}/generated_schema.jsonl"
_STORAGE_FIELDS = ("size", "sha256", "contentType")
EXPORT_BATCH = 1000  # rows fetched, and lines written, at a time


class ImportRefused(RippleUsageError):
    """An import that changed nothing, and why (the file, line and field when a document is bad)."""


@dataclass
class Source:
    """The documents of one table: `(where, raw JSON object)` pairs, read again on each pass."""

    table: str
    lines: Callable[[], Iterator[tuple[str, dict[str, Any]]]]
    uniform: bool = False  # values in Convex's uniform export encoding (server/core/export_json.py)


@dataclass
class Plan:
    tables: list[Source]
    storage: Source | None = None
    blobs: dict[str, str] = field(default_factory=dict)  # old storage id -> zip entry
    archive: zipfile.ZipFile | None = None


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


# -- reading what is imported -----------------------------------------------------------------

def _jsonl(name: str, lines: Iterable[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{name} line {number}"
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ImportRefused(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ImportRefused(f"{where}: a document must be a JSON object, not {type(value).__name__}")
        yield where, value


def _zip_lines(archive: zipfile.ZipFile, entry: str) -> Callable[[], Iterator[tuple[str, dict[str, Any]]]]:
    def lines() -> Iterator[tuple[str, dict[str, Any]]]:
        with archive.open(entry) as f:
            yield from _jsonl(entry, f)

    return lines


def snapshot_plan(archive: zipfile.ZipFile, catalog: Catalog) -> Plan:
    """What a snapshot ZIP holds; refused when it names a table the schema lacks."""
    plan = Plan(tables=[], archive=archive)
    for name in archive.namelist():
        match = _DOCUMENTS.match(name)
        if match is None:
            if name.startswith("_storage/") and name != "_storage/documents.jsonl":
                plan.blobs[name.split("/", 1)[1].split(".", 1)[0]] = name
            continue
        table = match.group(1)
        source = Source(table, _zip_lines(archive, name), _uniform(archive, table))
        if table == STORAGE.name:
            plan.storage = source
        elif not table.startswith("_"):  # _tables: numbers are this deployment's; other system tables are not data
            if table not in catalog.by_name:
                raise ImportRefused(f"{name}: table {table!r} is not in the schema (known tables: "
                                    f"{', '.join(sorted(n for n in catalog.by_name if not n.startswith('_'))) or 'none'})")
            plan.tables.append(source)
    return plan


def _uniform(archive: zipfile.ZipFile, table: str) -> bool:
    """Whether the table's generated_schema.jsonl marks its values as Convex's uniform encoding
    (any other content: an older Convex export's inferred types, not read; values as encoded JSON)."""
    try:
        with archive.open(_GENERATED_SCHEMA.format(table)) as f:
            first = f.readline()
    except KeyError:
        return False
    try:
        return bool(orjson.loads(first) == "uniform")
    except orjson.JSONDecodeError:
        return False


def _csv_cell(text: str) -> Any:
    """A CSV cell as Convex's CSV import reads it: numbers as float64, true/false as booleans,
    anything else a string."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def table_plan(table: str, fmt: str, data: IO[bytes], catalog: Catalog, name: str | None = None) -> Plan:
    """One table's documents from a JSONL, JSON (an array of objects) or CSV (a header row) file;
    `name`: the file's, for error messages."""
    if fmt not in FORMATS:
        raise ImportRefused(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if table.startswith("_") or table not in catalog.by_name:
        raise ImportRefused(f"table {table!r} is not a table of the schema")
    name = name or f"{table}.{fmt}"

    def lines() -> Iterator[tuple[str, dict[str, Any]]]:
        data.seek(0)
        if fmt == "jsonl":
            yield from _jsonl(name, data)
        elif fmt == "json":
            try:
                docs = orjson.loads(data.read())
            except orjson.JSONDecodeError as exc:
                raise ImportRefused(f"{name}: not valid JSON ({exc})") from None
            if not isinstance(docs, list):
                raise ImportRefused(f"{name}: a JSON import is an array of objects")
            for number, doc in enumerate(docs, start=1):
                if not isinstance(doc, dict):
                    raise ImportRefused(f"{name} element {number}: a document must be a JSON object")
                yield f"{name} element {number}", doc
        else:
            text = io.TextIOWrapper(data, encoding="utf-8", newline="")
            try:
                reader = csv.DictReader(text)
                for row in reader:
                    yield f"{name} line {reader.line_num}", {k: _csv_cell(v) for k, v in row.items() if v != ""}
            finally:
                text.detach()  # `data` stays open: the next pass reads it again

    return Plan(tables=[Source(table, lines)])


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


def _ids(plan: Plan, catalog: Catalog, mode: str) -> dict[str, str]:
    """First pass: every `_id` in the import -> the id it gets here. Replacing or appending, a file
    gets a new id: its bytes are written before the transaction, so they must not land on a file
    that exists (replacing: whose bytes are removed once the import commits)."""
    ids: dict[str, str] = {}
    sources = [*plan.tables, *([plan.storage] if plan.storage else [])]
    for source in sources:
        number = catalog.by_name[source.table].number
        for where, raw in source.lines():
            old = raw.get("_id")
            if old is None:
                continue
            if not isinstance(old, str):
                raise ImportRefused(f"{where}: field _id must be a string, not {old!r}")
            if old in ids:
                raise ImportRefused(f"{where}: _id {old} appears twice in the import")
            fresh = mode != "empty" and source is plan.storage
            ids[old] = new_id(number) if fresh else _keep_or_draw(old, number)
    return ids


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
    for row in rows:
        if table == STORAGE.name:
            await runtime.files.delete_in(writer, tx, row["id"])
        else:
            await writer.delete(table, row["id"])


async def run_import(runtime: Runtime, plan: Plan, mode: str) -> dict[str, int]:
    """Import `plan` all or nothing; the documents written, by table."""
    if mode not in MODES:
        raise ImportRefused(f"mode {mode!r} is not one of {', '.join(MODES)}")
    catalog = runtime.catalog
    ids = _ids(plan, catalog, mode)
    blobs: dict[str, tuple[str, Written, Any]] = {}
    try:
        blobs = await _put_blobs(runtime, plan, ids)

        async def body(writer: DatabaseWriter, tx: Transaction) -> dict[str, int]:
            tx.unlimited_writes = True
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
                n = 0
                for where, raw in source.lines():
                    fields = {k: v for k, v in raw.items() if k not in ("_id", "_creationTime")}
                    old = raw.get("_id")
                    info = catalog.by_name[source.table]
                    if mode == "append" and old is not None and await tx.execute("fetchrow", info.sql.get, ids[old]):
                        raise ImportRefused(f"{where}: table {source.table} already has a document {ids[old]}")
                    try:
                        value = _remap(from_convex_json(from_uniform(fields) if source.uniform else fields), ids)
                        await writer.insert(source.table, value, doc_id=None if old is None else ids[old],
                                            creation_time=_creation_time(where, raw))
                    except ImportRefused:
                        raise
                    except (RippleError, NotInt64) as exc:
                        raise ImportRefused(f"{where} (table {source.table}): {exc}") from None
                    n += 1
                counts[source.table] = counts.get(source.table, 0) + n
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
