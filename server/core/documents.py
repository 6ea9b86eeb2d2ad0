"""The document API functions see as `ctx.db`: reads for queries, writes for mutations.

Reads and writes go through the function's `Transaction` (server/core/transaction.py), which
records the read set and the write set; range reads are `Query` objects (server/core/query.py).
Writes are validated against the table's model and refuse index keys PostgreSQL could not store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, cast, overload

from server.core import keys, limits
from server.core.database import Catalog, TableInfo, decode_doc
from server.core.ids import new_id, table_number_of
from server.core.query import Query
from server.core.schema import CREATION_TIME
from server.core.system_tables import UNREADABLE
from server.core.transaction import ReadRange, Transaction, WriteKeys
from server.core.values import to_convex_json
from server.errors import ForbiddenOperation, InvalidIdError, RippleUsageError


def _resolve_id(catalog: Catalog, doc_id: Any) -> TableInfo:
    number = table_number_of(doc_id)
    info = catalog.by_number.get(number)
    if info is None:
        raise InvalidIdError(f"{doc_id!r} does not belong to any table of this deployment")
    return info


def _addressed(catalog: Catalog, verb: str, address: tuple[Any, ...], rest: int) -> tuple[TableInfo, str, tuple[Any, ...]]:
    """`(id, *rest)`, or `(table, id, *rest)` as newer Convex writes it (`db.get("videos", id)`),
    -> the id's table, the id and the rest. A table that is not the id's is refused."""
    if len(address) == rest + 2:
        table, doc_id, *others = address
        if not isinstance(table, str):
            raise RippleUsageError(f"ctx.db.{verb}: the table must be a string, not {table!r}")
        catalog.table(table)  # an unknown table is named as such
    elif len(address) == rest + 1:
        table, (doc_id, *others) = None, address
    else:
        shape = ", ".join(("[table]", "id", "fields")[: rest + 2])
        raise RippleUsageError(f"ctx.db.{verb} takes ({shape}), not {len(address)} arguments")
    info = _resolve_id(catalog, doc_id)
    if table is not None and info.name != table:
        raise InvalidIdError(f"ctx.db.{verb}({table!r}, {doc_id!r}): the id is a document of table {info.name}, not {table}")
    return info, doc_id, tuple(others)



def _check_readable(table: str) -> None:
    if table in UNREADABLE:  # secrets: functions read them through ctx.env
        raise RippleUsageError(f"system table {table} is not readable through ctx.db.system; read variables with ctx.env")


class SystemReader:
    """`ctx.db.system`: read access to system tables (`_scheduled_functions`, ...)."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def _info(self, table: str) -> TableInfo:
        if not isinstance(table, str) or not table.startswith("_"):
            raise RippleUsageError(f"{table!r} is not a system table; use ctx.db.query for user tables")
        _check_readable(table)
        return self._tx.catalog.table(table)

    @overload
    async def get(self, doc_id: str, /) -> dict[str, Any] | None: ...
    @overload
    async def get(self, table: str, doc_id: str, /) -> dict[str, Any] | None: ...

    async def get(self, *address: str) -> dict[str, Any] | None:
        info, doc_id, _ = _addressed(self._tx.catalog, "system.get", address, 0)
        if not info.name.startswith("_"):
            raise RippleUsageError(f"{doc_id} is a document of user table {info.name}; use ctx.db.get")
        _check_readable(info.name)
        return await _get(self._tx, info, doc_id)

    def query(self, table: str) -> Query:
        return Query(self._tx, self._info(table))


async def _get(tx: Transaction, info: TableInfo, doc_id: str) -> dict[str, Any] | None:
    row = await _row(tx, info, doc_id)
    tx.reads.append(ReadRange(info.name, "by_id", doc_id.encode(), doc_id.encode() + b"\x00"))
    if row is None:
        return None
    tx.count_read(1, limits.stored_bytes(row[1]))
    return decode_doc(doc_id, *row)


async def _row(tx: Transaction, info: TableInfo, doc_id: str) -> tuple[float, Any] | None:
    """The document's (creation_time, stored fields) in `tx`: the row the transaction read
    already, unless it wrote it since (Transaction.rows_seen), else one SELECT."""
    seen = tx.rows_seen.get(doc_id)
    if seen is not None:
        return seen
    row = await tx.execute("fetchrow", info.sql.get, doc_id)
    if row is None:
        return None
    tx.saw_row(info.name, doc_id, row["creation_time"], row["doc"])
    return row["creation_time"], row["doc"]


class DatabaseReader:
    """`ctx.db` in queries."""

    def __init__(self, tx: Transaction, system: bool = False) -> None:
        self._tx = tx
        self._system_access = system  # runtime-internal writers may touch system tables
        self.system = SystemReader(tx)

    @overload
    async def get(self, doc_id: str, /) -> dict[str, Any] | None: ...
    @overload
    async def get(self, table: str, doc_id: str, /) -> dict[str, Any] | None: ...

    async def get(self, *address: str) -> dict[str, Any] | None:
        """`get(id)` or `get(table, id)`: the document, or None."""
        info, doc_id, _ = _addressed(self._tx.catalog, "get", address, 0)
        if info.name.startswith("_") and not self._system_access:
            raise RippleUsageError(f"{doc_id} is a document of system table {info.name}; use ctx.db.system.get")
        return await _get(self._tx, info, doc_id)

    def query(self, table: str) -> Query:
        if self._system_access and isinstance(table, str) and table.startswith("_"):
            return Query(self._tx, self._tx.catalog.table(table))
        if not isinstance(table, str) or table.startswith("_"):
            raise RippleUsageError(f"{table!r} is not a user table; system tables are under ctx.db.system")
        return Query(self._tx, self._tx.catalog.table(table))

    def normalize_id(self, table: str, doc_id: Any) -> str | None:
        """The id if it is a valid id of `table`, else None."""
        try:
            info = _resolve_id(self._tx.catalog, doc_id)
        except InvalidIdError:
            return None
        return doc_id if info.name == table else None


class StagedRow(NamedTuple):
    """A new version of a locked row, validated and in the write set, not yet written."""

    info: TableInfo
    values: tuple[Any, ...]  # id, ctid, doc, then the table's index keys


class Staged(NamedTuple):
    """A document to insert (validated) or delete (read), counted, not yet written or in the
    write set (DatabaseWriter.staged_insert, staged_delete)."""

    info: TableInfo
    doc: dict[str, Any]  # with _id and _creationTime: as it will be stored, or as it was
    keys: WriteKeys | None  # its write-set keys, new or old
    values: tuple[Any, ...] = ()  # an insert's parameters: id, creation time, doc, index keys, derived columns


async def write_staged(send: Callable[..., Awaitable[Any]], rows: list[StagedRow]) -> None:
    """Write staged rows of one table in one statement, `send` being the transaction's (the row
    versions must still be the ones locked: a row that moved is an error, as in patch_locked)."""
    info = rows[0].info
    status = await send("execute", info.sql.update_many_at_ctid, *map(list, zip(*(r.values for r in rows), strict=True)))
    if status != f"UPDATE {len(rows)}":
        raise RuntimeError(f"rows of {info.name} moved while locked ({status} of {len(rows)})")


class DatabaseWriter(DatabaseReader):
    """`ctx.db` in mutations: reads plus insert, patch, replace and delete."""

    def _keys(self, info: TableInfo, doc: Mapping[str, Any]) -> dict[str, bytes]:
        return keys.index_keys(doc, info.index_fields, info.name)

    @staticmethod
    def _columns(info: TableInfo, index_keys: dict[str, bytes], doc: Mapping[str, Any]) -> list[Any]:
        """The parameters after `doc` of the table's insert and update statements: index keys,
        then the columns of its search and vector indexes."""
        params: list[Any] = list(index_keys.values())
        for d in info.derived:
            params += d.values(doc)
        return params

    @staticmethod
    def _write_keys(info: TableInfo, index_keys: dict[str, bytes] | None, doc: Mapping[str, Any] | None) -> WriteKeys | None:
        """What the write set holds of a document: its index keys, and its keys in search
        indexes (several per document: one per term)."""
        if index_keys is None or doc is None:
            return None
        if not info.derived:  # most tables: the keys as they are, no copy on every write
            return cast(WriteKeys, index_keys)
        out: WriteKeys = dict(index_keys)
        for d in info.derived:
            derived = d.keys(doc)
            if derived is not None:
                out[d.name] = derived
        return out

    async def _after_write(self, info: TableInfo, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        for d in info.derived:
            await d.after_write(self._tx.execute, old, new)

    async def insert(self, table: str, doc: Mapping[str, Any], *, doc_id: str | None = None,
                     creation_time: float | None = None) -> str:
        """Insert `doc`; returns its new id. `doc_id`: the runtime's own writers only, an id it
        drew itself (a stored file's id names its bytes, written before the document), or one
        an import keeps; `creation_time`: an import's, kept as the snapshot has it."""
        info, doc_id, full, write_keys, values = self._prepare_insert(table, doc, doc_id, creation_time)
        await self._tx.execute("execute", info.sql.insert, *values)
        self._tx.record_write(info.name, doc_id, None, write_keys)
        await self._after_write(info, None, full)
        return doc_id

    def staged_insert(self, table: str, doc: Mapping[str, Any], *, doc_id: str | None = None,
                      creation_time: float | None = None) -> Staged:
        """`insert` up to its statement (validated, id and creation time given, keys, size and
        count checked); an import writes many together (bulk_writes.insert_staged)."""
        info, _, full, write_keys, values = self._prepare_insert(table, doc, doc_id, creation_time)
        return Staged(info, full, write_keys, values)

    def _prepare_insert(self, table: str, doc: Mapping[str, Any], doc_id: str | None, creation_time: float | None,
                        ) -> tuple[TableInfo, str, dict[str, Any], WriteKeys | None, tuple[Any, ...]]:
        if (doc_id is not None or creation_time is not None) and not self._system_access:
            raise ForbiddenOperation("only the runtime chooses a document's id")
        if not isinstance(table, str) or (table.startswith("_") and not self._system_access):
            raise RippleUsageError(f"cannot insert into {table!r}: not a user table")
        info = self._tx.catalog.table(table)
        if not isinstance(doc, Mapping):
            raise RippleUsageError(f"insert into {table}: the document must be a dict")
        fields = {k: v for k, v in doc.items() if k not in ("_id", "_creationTime")}
        if "_id" in doc or "_creationTime" in doc:
            raise RippleUsageError(f"insert into {table}: _id and _creationTime are assigned by Ripple")
        stored = info.table.validate(fields, tables=self._tx.catalog.names)
        if doc_id is None:
            doc_id = new_id(info.number)
        elif table_number_of(doc_id) != info.number:
            raise RippleUsageError(f"insert into {table}: {doc_id} is not an id of {table}")
        if creation_time is None:
            creation_time = self._tx.next_creation_time()
        full = {"_id": doc_id, CREATION_TIME: creation_time, **stored}
        new_keys = self._keys(info, full)
        encoded = to_convex_json(stored)
        self._count_write(info, doc_id, encoded)
        values = (doc_id, creation_time, encoded, *self._columns(info, new_keys, full))
        return info, doc_id, full, self._write_keys(info, new_keys, full), values

    async def _load(self, address: tuple[Any, ...], verb: str, rest: int) -> tuple[TableInfo, dict[str, Any], tuple[Any, ...]]:
        """The document at `address` ((table,) id, then `rest` more arguments) and the rest."""
        info, doc_id, others = _addressed(self._tx.catalog, verb, address, rest)
        if info.name.startswith("_") and not self._system_access:
            raise ForbiddenOperation(f"cannot {verb} documents of system table {info.name}")
        current = self._loaded(info, doc_id, await _row(self._tx, info, doc_id))
        if current is None:
            raise RippleUsageError(f"cannot {verb} {doc_id}: no such document in {info.name}")
        return info, current, others

    def _loaded(self, info: TableInfo, doc_id: str, row: tuple[float, Any] | None) -> dict[str, Any] | None:
        """The document of a row read by id (None: there is none), in the read set and counted."""
        self._tx.reads.append(ReadRange(info.name, "by_id", doc_id.encode(), doc_id.encode() + b"\x00"))
        if row is None:
            return None
        self._tx.count_read(1, limits.stored_bytes(row[1]))
        return decode_doc(doc_id, *row)

    async def _store(self, info: TableInfo, current: dict[str, Any], fields: dict[str, Any], ctid: Any = None) -> None:
        """Validate and write the new version of `current`; `ctid`: address exactly the row
        version the transaction holds locked (see patch_locked)."""
        doc_id = current["_id"]
        stored = info.table.validate(fields, doc_id=doc_id, tables=self._tx.catalog.names)
        full = {"_id": doc_id, CREATION_TIME: current[CREATION_TIME], **stored}
        old_keys, new_keys = self._keys(info, current), self._keys(info, full)
        encoded = to_convex_json(stored)
        self._count_write(info, doc_id, encoded)
        columns = self._columns(info, new_keys, full)
        if ctid is None:
            await self._tx.execute("execute", info.sql.update, doc_id, encoded, *columns)
        else:
            status = await self._tx.execute("execute", info.sql.update_at_ctid, doc_id, ctid, encoded, *columns)
            if status != "UPDATE 1":
                raise RuntimeError(f"{doc_id} moved while locked ({status})")
        self._tx.record_write(
            info.name, doc_id, self._write_keys(info, old_keys, current), self._write_keys(info, new_keys, full)
        )
        await self._after_write(info, current, full)

    def _count_write(self, info: TableInfo, doc_id: str, encoded: dict[str, Any] | None) -> None:
        """Before the statement: a user table's new document within Convex's limits, and the
        write within the transaction's (system tables are the runtime's, as in Convex)."""
        if not info.name.startswith("_"):
            size = 0 if encoded is None else limits.check_document(info.name, doc_id, encoded)
            self._tx.count_write(size)

    @staticmethod
    def _check_system_fields(doc_id: str, value: Mapping[str, Any], verb: str, current: dict[str, Any]) -> None:
        for f in ("_id", "_creationTime"):
            if f in value and value[f] != current[f]:
                raise RippleUsageError(f"{verb} {doc_id}: {f} cannot be changed")

    @overload
    async def patch(self, doc_id: str, fields: Mapping[str, Any], /) -> None: ...
    @overload
    async def patch(self, table: str, doc_id: str, fields: Mapping[str, Any], /) -> None: ...

    async def patch(self, *address: Any) -> None:
        """`patch(id, fields)` or `patch(table, id, fields)`: set the given fields."""
        info, current, (fields,) = await self._load(address, "patch", 1)
        doc_id = current["_id"]
        if not isinstance(fields, Mapping):
            raise RippleUsageError(f"patch {doc_id}: fields must be a dict")
        self._check_system_fields(doc_id, fields, "patch", current)
        merged = {k: v for k, v in current.items() if k not in ("_id", "_creationTime")}
        for k, v in fields.items():
            if k in ("_id", "_creationTime"):
                continue
            merged[k] = v
        await self._store(info, current, merged)

    async def patch_locked(self, current: dict[str, Any], ctid: Any, fields: Mapping[str, Any]) -> None:
        """Runtime only: patch a document this transaction read and row-locked itself, at
        physical address `ctid` (no index lookup, hence no SSI predicate lock on shared index
        pages: the scheduler's claims rely on it, see docs/scheduler.md)."""
        if not self._system_access:
            raise ForbiddenOperation("patch_locked is for the runtime's own system writes")
        info = _resolve_id(self._tx.catalog, current["_id"])
        merged = {k: v for k, v in current.items() if k not in ("_id", "_creationTime")}
        merged.update(fields)
        await self._store(info, current, merged, ctid)

    def staged_patch_locked(self, current: dict[str, Any], ctid: Any, fields: Mapping[str, Any],
                            stored_keys: Mapping[str, bytes] | None = None) -> StagedRow:
        """Runtime only: `patch_locked` whose statement is left to the caller: the new version is
        validated, counted and in the write set now, and the caller writes the returned row,
        with others of its table, by `write_staged` in this transaction before it commits (the
        scheduler defers its batch's job marks this way, Transaction.defer). `stored_keys`:
        the index keys stored with the row version at `ctid` (read with it), which are its old
        keys; an index over no patched field keeps its key."""
        if not self._system_access:
            raise ForbiddenOperation("staged_patch_locked is for the runtime's own system writes")
        info = _resolve_id(self._tx.catalog, current["_id"])
        if info.derived:
            raise RippleUsageError(f"{info.name} has search or vector indexes: its rows are written one by one")
        doc_id = current["_id"]
        merged = {k: v for k, v in current.items() if k not in ("_id", "_creationTime")}
        merged.update(fields)
        stored = info.table.validate(merged, doc_id=doc_id, tables=self._tx.catalog.names)
        full = {"_id": doc_id, CREATION_TIME: current[CREATION_TIME], **stored}
        if stored_keys is not None and stored_keys.keys() == info.index_fields.keys():
            old_keys = dict(stored_keys)
            patched = {f.split(".", 1)[0] for f in fields}
            touched = {n: fs for n, fs in info.index_fields.items() if any(f.split(".", 1)[0] in patched for f in fs)}
            new_keys = {**old_keys, **keys.index_keys(full, touched, info.name)}
        else:
            old_keys, new_keys = self._keys(info, current), self._keys(info, full)
        encoded = to_convex_json(stored)
        self._count_write(info, doc_id, encoded)
        self._tx.record_write(info.name, doc_id, cast(WriteKeys, old_keys), cast(WriteKeys, new_keys))
        return StagedRow(info, (doc_id, ctid, encoded, *new_keys.values()))

    @overload
    async def replace(self, doc_id: str, doc: Mapping[str, Any], /) -> None: ...
    @overload
    async def replace(self, table: str, doc_id: str, doc: Mapping[str, Any], /) -> None: ...

    async def replace(self, *address: Any) -> None:
        """`replace(id, doc)` or `replace(table, id, doc)`: the new fields, all of them."""
        info, current, (doc,) = await self._load(address, "replace", 1)
        doc_id = current["_id"]
        if not isinstance(doc, Mapping):
            raise RippleUsageError(f"replace {doc_id}: the document must be a dict")
        self._check_system_fields(doc_id, doc, "replace", current)
        await self._store(info, current, {k: v for k, v in doc.items() if k not in ("_id", "_creationTime")})

    @overload
    async def delete(self, doc_id: str, /) -> None: ...
    @overload
    async def delete(self, table: str, doc_id: str, /) -> None: ...

    async def delete(self, *address: str) -> None:
        """`delete(id)` or `delete(table, id)`."""
        info, current, _ = await self._load(address, "delete", 0)
        staged = self._staged_delete(info, current)
        await self._tx.execute("execute", info.sql.delete, current["_id"])
        self._tx.record_write(info.name, current["_id"], staged.keys, None)
        await self._after_write(info, current, None)

    def staged_delete(self, info: TableInfo, doc_id: str, creation_time: float, stored: Any) -> Staged:
        """Runtime only: `delete` up to its statement, of a row the caller read in this
        transaction (an import's --replace: bulk_writes.delete_staged), read and counted as
        `delete` reads and counts it."""
        if not self._system_access:
            raise ForbiddenOperation("staged_delete is for the runtime's own writes")
        current = self._loaded(info, doc_id, (creation_time, stored))
        assert current is not None
        return self._staged_delete(info, current)

    def _staged_delete(self, info: TableInfo, current: dict[str, Any]) -> Staged:
        self._count_write(info, current["_id"], None)
        return Staged(info, current, self._write_keys(info, self._keys(info, current), current))
