"""Many documents of one table written in a few statements: an import's inserts and the deletes
of its --replace (server/core/snapshot.py; docs/import-export.md).

Each document is staged by the same code as a single write (DatabaseWriter.staged_insert,
staged_delete: validation, ids, limits, index keys, counts), so what is refused, and why, is
what `insert` and `delete` refuse. Then one statement writes the batch: an INSERT ... SELECT
FROM unnest(...) of one array per column (a table with a vector index: its single-row insert
pipelined by executemany, since a vector column's values are arrays themselves), or a DELETE
of the batch's ids. Then, as `insert` and `delete` do for one document, each goes into the
write set and the table's search and vector indexes take their turn (`after_writes`: a search
index writes the batch's postings in one statement and their statistics in one more).
"""

from __future__ import annotations

from collections.abc import Sequence

from server.core.database import TableInfo
from server.core.documents import Staged
from server.core.transaction import Transaction

BATCH = 1000  # documents per statement


async def present(tx: Transaction, info: TableInfo, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are documents of `info`'s table, in one statement."""
    if not ids:
        return set()
    return {row["id"] for row in await tx.execute("fetch", info.sql.present, list(ids))}


async def insert_staged(tx: Transaction, rows: Sequence[Staged]) -> None:
    """Write staged inserts of one table (DatabaseWriter.staged_insert) as `insert` would have
    written each: the rows, the write set, the derived indexes."""
    if not rows:
        return
    info = rows[0].info
    if info.sql.insert_many is None:
        await tx.execute("executemany", info.sql.insert, [r.values for r in rows])
    else:
        status = await tx.execute("execute", info.sql.insert_many, *map(list, zip(*(r.values for r in rows), strict=True)))
        if status != f"INSERT 0 {len(rows)}":
            raise RuntimeError(f"inserting {len(rows)} documents into {info.name} wrote {status}")
    for r in rows:
        tx.record_write(info.name, r.doc["_id"], None, r.keys)
    for d in info.derived:
        await d.after_writes(tx.execute, [(None, r.doc) for r in rows])


async def delete_staged(tx: Transaction, rows: Sequence[Staged]) -> None:
    """Delete staged documents of one table (DatabaseWriter.staged_delete) as `delete` would
    have deleted each."""
    if not rows:
        return
    info = rows[0].info
    status = await tx.execute("execute", info.sql.delete_many, [r.doc["_id"] for r in rows])
    if status != f"DELETE {len(rows)}":
        raise RuntimeError(f"deleting {len(rows)} documents of {info.name} deleted {status}")
    for r in rows:
        tx.record_write(info.name, r.doc["_id"], r.keys, None)
    for d in info.derived:
        await d.after_writes(tx.execute, [(r.doc, None) for r in rows])
