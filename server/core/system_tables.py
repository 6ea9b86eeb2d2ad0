"""System tables: document tables the runtime owns (names start with `_`).

Functions read them through `ctx.db.system` like any table (indexes, ranges, pagination, live
queries); only the runtime writes them, through a DatabaseWriter made with `system=True`.
Their table numbers are fixed (user tables get numbers below 10000), so ids stay stable.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from server.core.schema import Table

SYSTEM_TABLE_NUMBERS: dict[str, int] = {}
SYSTEM_TABLES: dict[str, Table] = {}


class SystemDocument(BaseModel):
    """A system table's document model. The fields named in OMIT_WHEN_NONE are left out rather
    than stored as null when they have no value, as Convex does."""

    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if not (v is None and k in self.OMIT_WHEN_NONE)}


def register_system_table(name: str, number: int, table: Table) -> Table:
    if number < 10000:
        raise ValueError("system table numbers start at 10000")
    if SYSTEM_TABLE_NUMBERS.get(name, number) != number or number in {
        n for other, n in SYSTEM_TABLE_NUMBERS.items() if other != name
    }:
        raise ValueError(f"system table {name} or number {number} registered twice")
    table.bind(name, system=True)
    SYSTEM_TABLE_NUMBERS[name] = number
    SYSTEM_TABLES[name] = table
    return table
