"""What an index computed from each document and kept in columns of its row looks like to the
rest of the runtime: database.py adds, fills and drops its columns, documents.py writes them with
every document, readsets see its write-set keys. Search and vector indexes are such indexes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.core import sql


@dataclass(frozen=True)
class Features:
    """What the database offers beyond plain PostgreSQL (found by schema_apply._features)."""

    pgvector: bool = False
    vector_schema: str = ""  # the PostgreSQL schema pgvector's types and operators live in
    pgvector_version: tuple[int, ...] = ()  # (0, 8, 1)


@dataclass(frozen=True)
class Column:
    """A column of a derived index: its name, SQL type, and the SQL expression that turns the
    statement parameter (written `{}`) into the stored value."""

    name: str
    sql_type: str
    expr: str = "{}"


class Execute(Protocol):
    async def __call__(self, method: str, query: str, *args: Any) -> Any: ...


class DerivedIndex:
    """One search or vector index of one table. Subclasses define the columns and their values."""

    kind: str = ""  # "search" or "vector"

    def __init__(self, table: str, name: str) -> None:
        self.table = table
        self.name = name

    def columns(self) -> list[Column]:
        raise NotImplementedError

    def values(self, doc: Mapping[str, Any]) -> list[Any]:
        """The statement parameters for `columns()`, in order, for a document (with `_id`)."""
        raise NotImplementedError

    def keys(self, doc: Mapping[str, Any]) -> list[bytes] | None:
        """Write-set keys of a document in this index (readsets.py compares them with the
        ReadRanges search queries record under the index's name); None: no query reads it
        reactively."""
        return None

    def definition(self) -> dict[str, Any]:
        """Stored in `_ripple_tables.indexes`: a change rebuilds the index. Holds "kind" and
        "columns" (so that a later version can drop them without knowing the kind)."""
        raise NotImplementedError

    async def prepare(self, execute: Execute) -> None:
        """Before the backfill, once its columns exist: make what else the index keeps."""

    def create_statements(self) -> list[str]:
        """PostgreSQL indexes over the columns, run after they were filled."""
        return []

    def relations(self) -> list[str]:
        """The names of the PostgreSQL indexes `create_statements` makes (one namespace with the
        tables and the other indexes: schema_apply refuses a clash)."""
        return [sql.index_name(self.table, self.name)]

    async def after_write(self, execute: Execute, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """In the writing transaction, after a document's row was written (old None: inserted;
        new None: deleted). Rolled back with it."""

    async def after_writes(self, execute: Execute,
                           changes: Sequence[tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]) -> None:
        """`after_write` of many distinct documents, each `(old, new)`, in as few statements as
        the kind can (an import, bulk_writes.py); the same effect as calling it for each in turn."""
        for old, new in changes:
            await self.after_write(execute, old, new)

    async def after_backfill(self, execute: Execute, docs: list[dict[str, Any]]) -> None:
        """While the index is built: after `docs` (a batch of stored documents) got their columns."""

    @staticmethod
    async def forget(execute: Execute, table: str, name: str, definition: Mapping[str, Any]) -> None:
        """An index of this kind was dropped (or is being rebuilt): remove what it kept outside
        its columns."""
