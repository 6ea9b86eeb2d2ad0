"""Do a transaction's writes touch what a query read?

A read set is a list of ReadRange (half-open key ranges per table index; `by_id` ranges cover
document ids). A write set lists, per written document, its index keys before and after. A write
affects a read when any old or new key of the same table and index falls inside the range.
"""

from __future__ import annotations

import base64
from collections.abc import Hashable, Iterable
from typing import Any, Generic, TypeVar

from server.core import sql
from server.core.transaction import ReadRange
from server.errors import StaleTimestamp


def write_keys(write: dict[str, Any]) -> Iterable[tuple[str, str, bytes]]:
    """(table, index, key) for every key a logged write (Write.to_json form) touched."""
    table = write["table"]
    doc_id = write["id"].encode()
    yield table, "by_id", doc_id
    for side in ("old", "new"):
        keys = write.get(side)
        if keys:
            for index, encoded in keys.items():
                if isinstance(encoded, str):
                    yield table, index, base64.b64decode(encoded)
                else:  # a search index: one key per term
                    for one in encoded:
                        yield table, index, base64.b64decode(one)


def overlaps(reads: Iterable[ReadRange], writes: Iterable[dict[str, Any]]) -> bool:
    by_index: dict[tuple[str, str], list[ReadRange]] = {}
    for r in reads:
        by_index.setdefault((r.table, r.index), []).append(r)
    for write in writes:
        for table, index, key in write_keys(write):
            for r in by_index.get((table, index), ()):
                if r.lo <= key < r.hi:
                    return True
    return False


MAX_TS_LOOKBACK_COMMITS = 10_000


async def check_unchanged_since(conn: Any, reads: list[ReadRange], at_ts: int, snapshot_ts: int) -> None:
    """A query at an older ts is answered from the current snapshot when no commit since
    then wrote into what the query read; otherwise the caller must retry at a newer ts."""
    if at_ts >= snapshot_ts:
        return
    rows = await conn.fetch(sql.COMMITS_BETWEEN, at_ts, snapshot_ts, MAX_TS_LOOKBACK_COMMITS + 1)
    pruned_through = await conn.fetchval(sql.PRUNED_THROUGH)
    too_far = len(rows) > MAX_TS_LOOKBACK_COMMITS or (pruned_through is not None and at_ts < int(pruned_through))
    if too_far or overlaps(reads, (w for r in rows for w in r["writes"])):
        raise StaleTimestamp(
            f"timestamp {at_ts} is too old: documents this query reads changed since; "
            "fetch a new timestamp from /api/query_ts"
        )


Owner = TypeVar("Owner", bound=Hashable)


class ReadIndex(Generic[Owner]):
    """Which registered read sets does a batch of writes touch, without scanning them all?

    Every range [lo, hi) is filed under its bounds' common prefix P: any key inside the range
    starts with P (lo <= k < hi and both bounds start with P). A written key k is then looked up
    once per distinct prefix length filed for its table index, as k[:len(P)], and only the ranges
    in those buckets are compared. The cost of a write depends on the number of prefix lengths in
    use and on the ranges that share its prefixes, not on the number of registered read sets.
    """

    def __init__(self) -> None:
        # (table, index) -> prefix -> owner -> ranges filed there
        self._buckets: dict[tuple[str, str], dict[bytes, dict[Owner, list[ReadRange]]]] = {}
        # (table, index) -> prefix length -> number of buckets of that length
        self._lengths: dict[tuple[str, str], dict[int, int]] = {}
        self._filed: dict[Owner, list[tuple[tuple[str, str], bytes]]] = {}

    def __len__(self) -> int:
        return len(self._filed)

    def __contains__(self, owner: object) -> bool:
        """Has `owner` a read set filed (a non-empty one)?"""
        return owner in self._filed

    def put(self, owner: Owner, reads: Iterable[ReadRange]) -> None:
        """File `owner`'s read set, replacing what it had."""
        self.discard(owner)
        filed: list[tuple[tuple[str, str], bytes]] = []
        for r in reads:
            where = (r.table, r.index)
            prefix = _common_prefix(r.lo, r.hi)
            buckets = self._buckets.setdefault(where, {})
            bucket = buckets.get(prefix)
            if bucket is None:
                bucket = buckets[prefix] = {}
                lengths = self._lengths.setdefault(where, {})
                lengths[len(prefix)] = lengths.get(len(prefix), 0) + 1
            ranges = bucket.get(owner)
            if ranges is None:
                bucket[owner] = [r]
                filed.append((where, prefix))
            else:
                ranges.append(r)
        if filed:
            self._filed[owner] = filed

    def discard(self, owner: Owner) -> None:
        for where, prefix in self._filed.pop(owner, ()):
            buckets = self._buckets[where]
            bucket = buckets[prefix]
            del bucket[owner]
            if not bucket:
                del buckets[prefix]
                lengths = self._lengths[where]
                lengths[len(prefix)] -= 1
                if not lengths[len(prefix)]:
                    del lengths[len(prefix)]
                if not buckets:
                    del self._buckets[where], self._lengths[where]

    def touched_by(self, writes: Iterable[dict[str, Any]]) -> set[Owner]:
        """Owners with a read range containing a key the writes touched (old or new)."""
        found: set[Owner] = set()
        for table, index, key in _distinct(write_keys(w) for w in writes):
            where = (table, index)
            buckets = self._buckets.get(where)
            if buckets is None:
                continue
            for length in self._lengths[where]:
                if length > len(key):
                    continue
                bucket = buckets.get(key[:length])
                if bucket is None:
                    continue
                for owner, ranges in bucket.items():
                    if owner not in found and any(r.lo <= key < r.hi for r in ranges):
                        found.add(owner)
        return found


def _distinct(groups: Iterable[Iterable[tuple[str, str, bytes]]]) -> set[tuple[str, str, bytes]]:
    return {k for group in groups for k in group}


def _common_prefix(a: bytes, b: bytes) -> bytes:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]
