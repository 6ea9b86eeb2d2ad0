"""The read-set index that decides which live queries a commit re-runs, against brute force."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from server.core.readsets import ReadIndex, overlaps
from server.core.transaction import ReadRange

# Small alphabets so that ranges, prefixes and keys collide often.
key_bytes = st.binary(max_size=5).map(lambda b: bytes(x % 4 for x in b))
tables = st.sampled_from(["t", "u"])
indexes = st.sampled_from(["by_a", "by_b"])


@st.composite
def read_ranges(draw: st.DrawFn) -> ReadRange:
    lo, hi = draw(key_bytes), draw(key_bytes)
    if draw(st.booleans()):  # point ranges, as `get` and equality prefixes produce
        hi = lo + b"\x00"
    elif draw(st.booleans()):
        lo, hi = min(lo, hi), max(lo, hi)
    return ReadRange(draw(tables), draw(indexes), lo, hi)  # lo >= hi: an empty range


@st.composite
def writes(draw: st.DrawFn) -> dict[str, Any]:
    def keys() -> dict[str, str] | None:
        if draw(st.booleans()):
            return None
        return {i: base64.b64encode(draw(key_bytes)).decode() for i in draw(st.sets(indexes))}

    return {"table": draw(tables), "id": draw(st.text("ab", max_size=3)), "old": keys(), "new": keys()}


@settings(max_examples=300, deadline=None)
@given(
    owners=st.lists(st.lists(read_ranges(), max_size=4), max_size=12),
    replaced=st.lists(st.tuples(st.integers(0, 11), st.lists(read_ranges(), max_size=3)), max_size=4),
    dropped=st.sets(st.integers(0, 11), max_size=4),
    batch=st.lists(writes(), max_size=5),
)
def test_index_finds_exactly_the_overlapping_read_sets(
    owners: list[list[ReadRange]],
    replaced: list[tuple[int, list[ReadRange]]],
    dropped: set[int],
    batch: list[dict[str, Any]],
) -> None:
    index: ReadIndex[int] = ReadIndex()
    current = dict(enumerate(owners))
    for owner, reads in current.items():
        index.put(owner, reads)
    for owner, reads in replaced:  # a re-run query's read set replaces its previous one
        if owner in current:
            current[owner] = reads
            index.put(owner, reads)
    for owner in dropped:  # unsubscribed
        current.pop(owner, None)
        index.discard(owner)
    expected = {owner for owner, reads in current.items() if overlaps(reads, batch)}
    assert index.touched_by(batch) == expected


def test_emptied_index_forgets_everything() -> None:
    index: ReadIndex[str] = ReadIndex()
    index.put("q", [ReadRange("t", "by_a", b"ab", b"ab\x00"), ReadRange("t", "by_id", b"", b"\xff")])
    assert index.touched_by([{"table": "t", "id": "x", "old": None, "new": None}]) == {"q"}
    index.discard("q")
    assert len(index) == 0 and not index._buckets and not index._lengths
    assert index.touched_by([{"table": "t", "id": "x", "old": None, "new": None}]) == set()
