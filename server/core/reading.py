"""What an index range (query.py) and a search (search/query.py) share: reading with `collect`,
`first` and `unique` besides `take`, and the envelope of their pagination cursors."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from typing import Any

from server.core.database import TableInfo
from server.errors import PaginationError, RippleUsageError


def num_items(opts: object) -> int:
    """`paginationOpts.numItems`, a non-negative whole number (2.0 counts: JSON clients send floats)."""
    if not isinstance(opts, Mapping):
        raise RippleUsageError("paginate expects {'numItems': n, 'cursor': str | None}")
    num = opts.get("numItems")
    if isinstance(num, float) and num.is_integer():
        num = int(num)
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise RippleUsageError(f"paginationOpts.numItems must be a non-negative integer, not {num!r}")
    return num


def make_cursor(kind: int, fingerprint: bytes, body: bytes) -> str:
    """A pagination cursor: its kind (1 index range, 2 search), the query's 6-byte fingerprint,
    then the position, url-safe base64 without padding."""
    return base64.urlsafe_b64encode(bytes([kind]) + fingerprint + body).decode().rstrip("=")


def cursor_body(cursor: object, kind: int, fingerprint: bytes) -> bytes:
    """The position in a cursor made by `make_cursor` for the same kind of query and the same
    query; PaginationError("InvalidCursor") otherwise."""
    if not isinstance(cursor, str):
        raise PaginationError("InvalidCursor", f"pagination cursor must be a string, not {cursor!r}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError as exc:
        raise PaginationError("InvalidCursor", "pagination cursor is not valid") from exc
    if len(raw) < 7 or raw[0] != kind or raw[1:7] != fingerprint:
        raise PaginationError("InvalidCursor", "pagination cursor belongs to a different query")
    return raw[7:]


class Reads:
    """Built on the class's `take(n)` and `async for`; `_info` names the table in errors."""

    _info: TableInfo

    async def take(self, n: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError

    async def collect(self) -> list[dict[str, Any]]:
        return [doc async for doc in self]

    async def first(self) -> dict[str, Any] | None:
        docs = await self.take(1)
        return docs[0] if docs else None

    async def unique(self) -> dict[str, Any] | None:
        docs = await self.take(2)
        if len(docs) > 1:
            raise RippleUsageError(
                f"unique() found more than one document in {self._info.name} "
                f"({docs[0]['_id']}, {docs[1]['_id']})"
            )
        return docs[0] if docs else None
