"""What every query reads with besides `take`: `collect`, `first` and `unique`, the same for an
index range (query.py) and a search (search/query.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from server.core.database import TableInfo
from server.errors import RippleUsageError


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
