"""The derived indexes (search/derived.py) a table's schema declares, and each kind's class."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

from server.core import sql
from server.core.schema import SearchIndex, Table, VectorIndex
from server.core.search.derived import DerivedIndex, Execute, Features
from server.core.search.text import TextIndex
from server.core.search.vector import VectorColumns

log = logging.getLogger("ripple.database")

KINDS: dict[str, type[DerivedIndex]] = {TextIndex.kind: TextIndex, VectorColumns.kind: VectorColumns}


def derived_indexes(table: Table, features: Features) -> list[DerivedIndex]:
    out: list[DerivedIndex] = []
    for name, declared in table.search_indexes.items():
        index = cast(SearchIndex, declared)  # Table.bind normalized it
        out.append(TextIndex(table.name, name, index.search_field, index.filter_fields))
    for name, vector_declared in table.vector_indexes.items():
        vector = cast(VectorIndex, vector_declared)
        out.append(VectorColumns(table.name, name, vector.vector_field, vector.dimensions, vector.filter_fields, features))
    return out


async def drop_derived(execute: Execute, table: str, name: str, definition: Mapping[str, Any]) -> None:
    """Drop a search or vector index (its columns, and what it kept elsewhere), from the
    definition stored when it was made."""
    log.info("dropping %s index %s.%s", definition.get("kind", "derived"), table, name)
    for column in definition.get("columns", []):
        await execute("execute", sql.TableSql.drop_column(table, column))
    kind = KINDS.get(definition.get("kind", ""))
    if kind is not None:
        await kind.forget(execute, table, name, definition)


def executor(conn: Any) -> Execute:
    """`execute(method, query, *args)` on a bare connection, as Transaction.execute takes them."""

    async def execute(method: str, query: str, *args: Any) -> Any:
        return await getattr(conn, method)(query, *args)

    return execute
