"""Do a transaction's writes touch what a query read?

A read set is a list of ReadRange (half-open key ranges per table index; `by_id` ranges cover
document ids). A write set lists, per written document, its index keys before and after. A write
affects a read when any old or new key of the same table and index falls inside the range.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from server.core.documents import ReadRange


def write_keys(write: dict[str, Any]) -> Iterable[tuple[str, str, bytes]]:
    """(table, index, key) for every key a logged write (Write.to_json form) touched."""
    table = write["table"]
    doc_id = write["id"].encode()
    yield table, "by_id", doc_id
    for side in ("old", "new"):
        keys = write.get(side)
        if keys:
            for index, encoded in keys.items():
                yield table, index, base64.b64decode(encoded)


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
