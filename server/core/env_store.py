"""Where environment variables live: the `_environment_variables` system table, one document
per variable, indexed by name. Changes are written like any other write (in a transaction,
logged in the change log with their index keys, never their values), so every process learns
of them the way live queries learn of writes, and a read of a variable is a read range on the
`by_name` index that the existing overlap machinery compares with those writes.
"""

from __future__ import annotations

from typing import Any

from server.core import keys
from server.core.documents import DatabaseReader, DatabaseWriter
from server.core.env import Change, check_totals
from server.core.system_tables import ENVIRONMENT_VARIABLES
from server.core.transaction import ReadRange

TABLE = ENVIRONMENT_VARIABLES.name
INDEX = "by_name"


def read_range(name: str | None) -> ReadRange:
    """What reading variable `name` (None: all of them) reads."""
    prefix = keys.encode_values([] if name is None else [name])
    return ReadRange(TABLE, INDEX, prefix, prefix + keys.AFTER_PREFIX)


def touched(commits: list[Any]) -> bool:
    """Did any of these change-log rows (`writes` in Write.to_json form) change a variable?"""
    return any(w["table"] == TABLE for row in commits for w in row["writes"])


async def load(db: DatabaseReader) -> dict[str, str]:
    """Every variable, as `db`'s transaction sees them (`db` may read system tables)."""
    return {doc["name"]: doc["value"] for doc in await db.query(TABLE).with_index(INDEX).collect()}


async def _find(db: DatabaseReader, name: str) -> dict[str, Any] | None:
    return await db.query(TABLE).with_index(INDEX, lambda q: q.eq("name", name)).unique()


async def apply(db: DatabaseWriter, changes: list[Change]) -> dict[str, str]:
    """Apply a batch in `db`'s transaction, all or nothing; the variables after it. Refused
    (EnvVarError, which rolls the transaction back) past Convex's count and size limits."""
    for change in changes:
        doc = await _find(db, change.name)
        if change.value is None:
            if doc is not None:
                await db.delete(doc["_id"])
        elif doc is None:
            await db.insert(TABLE, {"name": change.name, "value": change.value})
        elif doc["value"] != change.value:
            await db.patch(doc["_id"], {"value": change.value})
    values = await load(db)
    check_totals(values)
    return values
