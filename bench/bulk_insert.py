"""How an import's batch of rows is best sent: one INSERT per row, asyncpg's executemany of the
single-row INSERT (pipelined), or one INSERT ... SELECT FROM unnest(one array per column).

What is measured
----------------
`--rows` (40,000) rows shaped like a plain Ripple table's (id text primary key, creation_time
float8, doc jsonb of ~120 bytes through the server's own jsonb codec, one bytea key column with a
btree index), written in one transaction into a fresh table over one connection, for each batch
size in `--batches` (500, 1000, 2000) by executemany and by unnest (alternating), then once a row
at a time. Wall time and rows/s; the table is dropped and made again before each case.

    python bench/bulk_insert.py

Chose unnest at 1,000 rows a statement for server/core/bulk_writes.py (docs/performance.md#import).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from typing import Any

import asyncpg
from common import DEFAULT_DB, ROOT

sys.path.insert(0, str(ROOT))
from server.core.database import init_connection  # after sys.path names this tree

INSERT = "INSERT INTO t (id, creation_time, doc, k) VALUES ($1, $2, $3, $4)"
INSERT_MANY = "INSERT INTO t (id, creation_time, doc, k) SELECT * FROM unnest($1::text[], $2::float8[], $3::jsonb[], $4::bytea[])"
TABLE = ("DROP TABLE IF EXISTS t; CREATE TABLE t (id text PRIMARY KEY, creation_time double precision NOT NULL, "
         "doc jsonb NOT NULL, k bytea NOT NULL); CREATE INDEX t_k ON t (k)")


async def case(conn: asyncpg.Connection, rows: list[tuple[Any, ...]], how: str, batch: int) -> float:
    await conn.execute(TABLE)
    started = time.perf_counter()
    async with conn.transaction():
        if how == "row":
            for row in rows:
                await conn.execute(INSERT, *row)
        for start in range(0, len(rows) if how != "row" else 0, batch):
            chunk = rows[start:start + batch]
            if how == "executemany":
                await conn.executemany(INSERT, chunk)
            else:
                await conn.execute(INSERT_MANY, *map(list, zip(*chunk, strict=True)))
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--database-url", default=os.environ.get("RIPPLE_TEST_DATABASE_URL", DEFAULT_DB))
    args = parser.parse_args()
    rows = [(secrets.token_hex(16), 1.7e12 + i, {"n": float(i), "text": "x" * 100}, secrets.token_bytes(30))
            for i in range(args.rows)]
    conn = await asyncpg.connect(args.database_url)
    schema = "bench_bulk_" + secrets.token_hex(4)
    try:
        await init_connection(conn)
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path = "{schema}"')
        for batch in args.batches:
            for how in ("executemany", "unnest"):
                seconds = await case(conn, rows, how, batch)
                print(f"{how:>11} of {batch:>5}: {seconds:6.2f} s, {args.rows / seconds:9,.0f} rows/s", flush=True)
        seconds = await case(conn, rows, "row", 1)
        print(f"{'a row':>11} at a time: {seconds:6.2f} s, {args.rows / seconds:9,.0f} rows/s")
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
