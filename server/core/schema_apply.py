"""Applying `schema.py` to PostgreSQL: tables, index key columns, search and vector index
columns, each built (backfilled) for the documents already stored, under the schema lock."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg

from server.core import sql
from server.core.database import Catalog, Database, TableInfo, decode_doc
from server.core.keys import index_keys
from server.core.schema import Schema, Table
from server.core.search.derived import DerivedIndex, Features
from server.core.search.indexes import derived_indexes, drop_derived, executor
from server.core.system_tables import SYSTEM_TABLES
from server.core.values import from_convex_json
from server.errors import DocumentValidationError, LimitExceeded, SchemaError

log = logging.getLogger("ripple.database")

BACKFILL_BATCH = 1000  # rows read and key columns written per round trip when an index changes


def _check_relation_names(tables: list[Table]) -> None:
    """Tables and their PostgreSQL indexes share one namespace of relation names. Index names
    are created IF NOT EXISTS, so a clash would silently leave an index out: refuse it."""
    owners = {t.name: f"table {t.name}" for t in tables}
    for t in tables:
        relations = [(f"index {t.name}.{index}", sql.index_name(t.name, index)) for index in t.index_fields()]
        relations += [
            (f"{d.kind} index {t.name}.{d.name}", pg_name)
            for d in derived_indexes(t, Features()) for pg_name in d.relations()
        ]
        for me, pg_name in relations:
            other = owners.setdefault(pg_name, me)
            if other != me:
                raise SchemaError(
                    f"{me} would be the PostgreSQL relation {pg_name!r}, which {other} already is; "
                    "rename one of them"
                )



async def apply_schema(db: Database, schema: Schema) -> Catalog:
    """Create or update tables and indexes; refuse changes that stored documents violate."""
    _check_relation_names([*schema.tables.values(), *(t.table for t in SYSTEM_TABLES)])
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(sql.SCHEMA_LOCK, db.schema_lock)
        await conn.execute(sql.BOOTSTRAP)
        known = {r["name"]: r for r in await conn.fetch(sql.LIST_TABLES)}
        # Stored documents can only hold ids of tables that existed before this change.
        names = {r["number"]: name for name, r in known.items()}
        names.update((system.number, system.name) for system in SYSTEM_TABLES)
        infos = []
        features = await _features(conn, schema)
        for name, table in schema.tables.items():
            row = known.get(name)
            number = row["number"] if row else await conn.fetchval(sql.INSERT_TABLE, name)
            infos.append(await _apply_table(conn, number, table, row, names, features))
        for system in SYSTEM_TABLES:
            row = known.get(system.name)
            if row is None:
                await conn.execute(sql.INSERT_SYSTEM_TABLE, system.number, system.name)
            elif row["number"] != system.number:
                raise SchemaError(f"system table {system.name} has number {row['number']}, expected {system.number}")
            infos.append(await _apply_table(conn, system.number, system.table, row, names, features))
        return Catalog(infos)

async def _features(conn: asyncpg.Connection, schema: Schema) -> Features:
    """What the database offers that the schema could use: pgvector, for vector indexes. When
    the schema has one and the extension is not installed, try to install it (in a savepoint:
    the database may not have it, or the role may not be allowed to)."""
    if not any(t.vector_indexes for t in schema.tables.values()):
        return Features()
    row = await conn.fetchrow(sql.PGVECTOR)
    if row is None:
        try:
            async with conn.transaction():
                await conn.execute(sql.CREATE_PGVECTOR)
        except asyncpg.PostgresError as exc:  # then maybe another process installed it meanwhile
            log.info("pgvector could not be installed (%s: %s)", type(exc).__name__, exc)
        row = await conn.fetchrow(sql.PGVECTOR)
    if row is None:
        log.info("vector indexes: no pgvector in this database, searches are exact scans")
        return Features()
    version = tuple(int(part) for part in re.findall(r"\d+", row["extversion"])[:3])
    log.info("vector indexes: pgvector %s (schema %s)", row["extversion"], row["nspname"])
    return Features(pgvector=True, vector_schema=row["nspname"], pgvector_version=version)

async def _apply_table(
    conn: asyncpg.Connection, number: int, table: Table, row: Any, names: dict[int, str],
    features: Features,
) -> TableInfo:
    fields = table.index_fields()
    derived = derived_indexes(table, features)
    definitions = {d.name: d.definition() for d in derived}
    tsql = sql.TableSql(table.name, list(fields), [c for d in derived for c in d.columns()])
    await conn.execute(tsql.create)
    # name -> field list (an index), or -> a derived index's definition (a dict)
    old_indexes: dict[str, Any] = row["indexes"] if row else {}
    old_fingerprint = row["fingerprint"] if row else ""
    fingerprint = table.fingerprint()
    if fingerprint != old_fingerprint:
        await _validate_existing(conn, table, tsql, names)
    changed = [name for name, f in fields.items() if old_indexes.get(name) != f]
    rebuilt = [d for d in derived if old_indexes.get(d.name) != definitions[d.name]]
    for name, old in old_indexes.items():
        if isinstance(old, dict):
            if definitions.get(name) != old:
                await drop_derived(executor(conn), table.name, name, old)
        elif name not in fields:
            log.info("dropping index %s.%s", table.name, name)
            await conn.execute(sql.TableSql.drop_key_column(table.name, name))
    if changed or rebuilt:
        for name in changed:
            if name in old_indexes:
                await conn.execute(sql.TableSql.drop_key_column(table.name, name))
            await conn.execute(tsql.add_key_column(name))
        for d in rebuilt:
            for column in d.columns():
                await conn.execute(tsql.add_column(column))
            await d.prepare(executor(conn))
        await _backfill(conn, tsql, {n: fields[n] for n in changed}, rebuilt)
        for name in changed:
            await conn.execute(tsql.key_not_null(name))
            await conn.execute(tsql.create_index(name))
        for d in rebuilt:
            for statement in d.create_statements():
                await conn.execute(statement)
    stored = {**fields, **definitions}
    if changed or rebuilt or fingerprint != old_fingerprint or old_indexes != stored:
        await conn.execute(sql.UPDATE_TABLE, table.name, stored, fingerprint)
    return TableInfo(number=number, table=table, sql=tsql, index_fields=fields, derived=derived)


async def _validate_existing(
    conn: asyncpg.Connection, table: Table, tsql: sql.TableSql, names: dict[int, str]
) -> None:
    async for rec in conn.cursor(tsql.scan_all):
        try:
            table.validate(from_convex_json(rec["doc"]), doc_id=rec["id"], tables=names)
        except DocumentValidationError as exc:
            raise SchemaError(
                f"schema change refused: existing documents violate it. {exc}"
            ) from exc

async def _backfill(
    conn: asyncpg.Connection, tsql: sql.TableSql, changed: dict[str, list[str]],
    rebuilt: list[DerivedIndex],
) -> None:
    """Fill the key columns of `changed` indexes and the columns of `rebuilt` search and
    vector indexes for every stored document, BACKFILL_BATCH rows at a time through a
    server-side cursor (inside apply_schema's transaction; the cursor does not see the rows
    this updates). The iterator form closes its portal when exhausted, which the ALTER TABLE
    that follows needs."""
    execute = executor(conn)

    async def flush(docs: list[dict[str, Any]]) -> None:
        for d in rebuilt:
            try:
                rows = [(doc["_id"], *d.values(doc)) for doc in docs]
            except LimitExceeded as exc:
                raise SchemaError(f"{d.kind} index {tsql.table}.{d.name} cannot be built: {exc}") from exc
            if d.columns():
                await conn.executemany(tsql.set_columns(d.columns()), rows)
            await d.after_backfill(execute, docs)
        for name, index_fields in changed.items():
            try:
                updates = [(doc["_id"], index_keys(doc, {name: index_fields}, tsql.table)[name]) for doc in docs]
            except LimitExceeded as exc:
                raise SchemaError(f"index {tsql.table}.{name} cannot be built: {exc}") from exc
            await conn.executemany(tsql.set_key(name), updates)

    batch: list[dict[str, Any]] = []
    async for rec in conn.cursor(tsql.scan_all, prefetch=BACKFILL_BATCH):
        batch.append(decode_doc(rec["id"], rec["creation_time"], rec["doc"]))
        if len(batch) >= BACKFILL_BATCH:
            await flush(batch)
            batch = []
    if batch:
        await flush(batch)
