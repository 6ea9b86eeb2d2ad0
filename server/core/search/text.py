"""Full-text search indexes: how text becomes terms, and how a document is kept searchable.

Tokenizing follows Convex's (crates/search/src/constants.rs, `convex_en`: tantivy's
SimpleTokenizer, RemoveLongFilter(32), LowerCaser): a term is a run of alphanumeric characters,
runs of 32 UTF-8 bytes or more are dropped, and terms are lowercased. No stemming, no stop words.

A search index keeps a table of postings of its own (`_search_...`, sql.postings_table): one
row per document and term it holds, with the term's count in the document, the document's
length and creation time, and its filter values as lexemes (`=<position>:<hash of the value>`).
A search reads the postings of its terms, sums each document's BM25 over them and keeps the
best: the work grows with the postings read, as an inverted index's does.

BM25 also needs, over the whole index, the number of documents, their total length and each
term's document frequency. Those live in `_ripple_search_stats` as rows of deltas that every
write inserts (no row is ever updated by a writer, so concurrent writers never conflict over
them) and that `compact_stats` folds together now and then; a query sums what it needs. The
same rows, ordered by term, are the dictionary that expands a query's last term as a prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from server.core import keys, sql
from server.core.search.derived import Column, DerivedIndex, Execute
from server.core.values import to_convex_json
from server.errors import RippleUsageError

MAX_TERM_BYTES = 32  # a term of this many UTF-8 bytes or more is dropped (Convex: MAX_TEXT_TERM_LENGTH)
MAX_QUERY_TERMS = 16  # terms of a search string past the 16th are ignored (Convex: MAX_QUERY_TERMS)
MAX_FILTER_CONDITIONS = 8  # equality filters in one search (Convex: MAX_FILTER_CONDITIONS)
MAX_CANDIDATES = 1024  # results one search can reach, all pages together (Convex: MAX_CANDIDATE_REVISIONS)

_RUN = re.compile(r"[^\W_]+")  # runs of characters for which str.isalnum() holds


def tokenize(text: str) -> list[str]:
    """The terms of `text`, in order, repeats included. (A run of fewer than MAX_TERM_BYTES / 4
    characters is short enough in any encoding: UTF-8 takes at most 4 bytes a character.)"""
    return [run.lower() for run in _RUN.findall(text)
            if len(run) < MAX_TERM_BYTES // 4 or len(run.encode("utf-8")) < MAX_TERM_BYTES]


def query_terms(text: str) -> list[str]:
    """The terms a search string asks for: its first MAX_QUERY_TERMS terms."""
    return tokenize(text)[:MAX_QUERY_TERMS]


def filter_lexeme(position: int, value: Any) -> str:
    """The lexeme that stands in `s_NAME` for "filter field number `position` equals `value`"."""
    encoded = bytearray()
    keys.encode_value(value, encoded)
    return f"={position}:{hashlib.blake2b(bytes(encoded), digest_size=16).hexdigest()}"


def filter_position(filter_fields: Sequence[str], field: str, value: Any, refused: str) -> int:
    """Where `field` is among an index's filter fields, for an `eq(field, value)` of a text or a
    vector search: RippleUsageError(`refused`) when it is none of them, ValueValidationError when
    `value` is no Convex value (`keys.UNDEFINED`, an absent field, is one to filter on)."""
    if field not in filter_fields:
        raise RippleUsageError(refused)
    if value is not keys.UNDEFINED:
        to_convex_json(value, field)
    return list(filter_fields).index(field)


TERM_FIRST = b"\x01"  # write-set keys: the term, then every filter value


def filters_first(count: int) -> bytes:
    """The family of write-set keys that start with the first `count` filter values."""
    return bytes([0x10 + count])


def term_key(term: str, filter_values: Sequence[Any] = ()) -> bytes:
    """A term-first write-set key: the term, then filter values (keys.py encoding). A search
    reads the range of keys starting with one of its terms and the leading filter values it gives."""
    return TERM_FIRST + keys.encode_values([term, *filter_values])


def filtered_term_key(filter_values: Sequence[Any], term: str) -> bytes:
    """A filters-first write-set key: the given leading filter values, then the term. Documents
    are also keyed this way by their first filter value and by all of them, so that the last
    term's prefix range can narrow to a search's filter values too."""
    return filters_first(len(filter_values)) + keys.encode_values([*filter_values, term])


def filter_prefixes(count: int) -> list[int]:
    """How many leading filter values the filters-first keys of an index with `count` filter
    fields start with: the first, and all."""
    return sorted({1, count}) if count else []


def prefix_range(prefix: str, filter_values: Sequence[Any] = ()) -> tuple[bytes, bytes]:
    """The write-set keys of every term starting with `prefix` (after `filter_values`, which
    must be a count filter_prefixes lists): keys.py encodes a string as a tag and its UTF-8
    bytes, so those keys share the tag and the prefix's bytes."""
    head = filters_first(len(filter_values)) + keys.encode_values(filter_values) if filter_values else TERM_FIRST
    lo = head + bytes([keys.TAG_STRING]) + prefix.encode("utf-8")
    return lo, lo + keys.AFTER_PREFIX


def stats_name(table: str, index: str) -> str:
    """How `_ripple_search_stats` names an index."""
    return f"{table}.{index}"


Postings = dict[str, int]  # term -> its count in the document


class TextIndex(DerivedIndex):
    kind = "search"

    def __init__(self, table: str, name: str, search_field: str, filter_fields: Sequence[str]) -> None:
        super().__init__(table, name)
        self.search_field = search_field
        self.filter_fields = list(filter_fields)
        self.stats = stats_name(table, name)
        self.postings = sql.postings_table(table, name)
        self.write_statements = {
            (remove, put, new): sql.write_postings(self.postings, remove, put, new)
            for remove in (False, True) for put in (False, True) for new in (False, True)
        }
        self.delete_many = sql.delete_postings_many(self.postings)
        self.put_many = {new: sql.put_postings_many(self.postings, new) for new in (False, True)}

    def columns(self) -> list[Column]:
        return []  # everything is in the postings table

    def values(self, doc: Mapping[str, Any]) -> list[Any]:
        return []

    def terms(self, doc: Mapping[str, Any]) -> list[str]:
        text = keys.field_value(doc, self.search_field)
        return tokenize(text) if isinstance(text, str) else []

    def filter_values(self, doc: Mapping[str, Any]) -> list[Any]:
        return [keys.field_value(doc, f) for f in self.filter_fields]

    def filter_lexemes(self, doc: Mapping[str, Any]) -> list[str]:
        return [filter_lexeme(i, v) for i, v in enumerate(self.filter_values(doc))]

    def keys(self, doc: Mapping[str, Any]) -> list[bytes]:
        """term_key(term, filters) for each term, then filtered_term_key(filters[:count], term)
        for each count of filter_prefixes: the same bytes, each value encoded once."""
        filters = self.filter_values(doc)
        terms = [keys.encode_values([t]) for t in dict.fromkeys(self.terms(doc))]
        tail = keys.encode_values(filters)
        out = [TERM_FIRST + t + tail for t in terms]
        for count in filter_prefixes(len(filters)):
            head = filters_first(count) + keys.encode_values(filters[:count])
            out += [head + t for t in terms]
        return out

    def definition(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "search_field": self.search_field,
            "filter_fields": self.filter_fields,
            "columns": [],
            "postings": self.postings,
        }

    def create_statements(self) -> list[str]:
        return []  # the postings table is made before the backfill fills it (prepare)

    async def prepare(self, execute: Execute) -> None:
        await execute("execute", sql.create_postings(self.postings))

    def _shape(self, doc: Mapping[str, Any] | None) -> tuple[Postings, int, list[str]]:
        if doc is None:
            return {}, 0, []
        terms = self.terms(doc)
        return dict(Counter(terms)), len(terms), self.filter_lexemes(doc)

    def _parameters(self, doc_id: str, creation_time: float, old: Mapping[str, Any] | None,
                    new: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
        """The write_postings parameters for a document going from `old` to `new` (None: absent),
        or None when its postings and the statistics stay as they are."""
        (before, before_length, before_filters) = self._shape(old)
        (after, after_length, after_filters) = self._shape(new)
        if (old is None) == (new is None) and before == after and before_length == after_length \
                and before_filters == after_filters:
            return None
        gone = [t for t in before if t not in after]
        whole = before_length != after_length or before_filters != after_filters
        put = {t: n for t, n in after.items() if whole or before.get(t) != n}
        deltas: Counter[str] = Counter({t: 1 for t in after})
        deltas.subtract({t: 1 for t in before})
        changed = [(t, n) for t, n in deltas.items() if n]
        docs = (new is not None) - (old is not None)
        stats_terms = [t for t, _ in changed] + [""]
        stats_docs = [n for _, n in changed] + [docs]
        stats_tokens = [0] * len(changed) + [after_length - before_length]
        return (
            doc_id, gone, self.stats, stats_terms, stats_docs, stats_tokens,
            after_length, creation_time, after_filters, list(put), list(put.values()),
        )

    def _change(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
        doc = new if new is not None else old
        assert doc is not None
        return self._parameters(doc["_id"], doc["_creationTime"], old, new)

    async def after_write(self, execute: Execute, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        params = self._change(old, new)
        if params is not None:
            await execute("execute", self._statement(params, old is None), *params)

    async def after_writes(self, execute: Execute,
                           changes: Sequence[tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]) -> None:
        """Every change's postings in one statement per part (removals; postings of new
        documents, plain inserts; of other documents, upserts), and the statistics' deltas
        summed per term in one more: the sums a statement per document leaves, in fewer rows."""
        gone: tuple[list[str], list[str]] = ([], [])
        puts: dict[bool, tuple[list[Any], ...]] = {True: ([], [], [], [], [], []), False: ([], [], [], [], [], [])}
        docs: Counter[str] = Counter()
        tokens: Counter[str] = Counter()
        for old, new in changes:
            params = self._change(old, new)
            if params is None:
                continue
            doc_id, removed, _, stats_terms, stats_docs, stats_tokens, length, created, filters, put, counts = params
            gone[0].extend(removed)
            gone[1].extend([doc_id] * len(removed))
            if put:
                k = len(put)
                for column, values in zip(puts[old is None], (put, [doc_id] * k, counts, [length] * k, [created] * k,
                                                               [" ".join(filters)] * k), strict=True):
                    column.extend(values)
            for term, d, n in zip(stats_terms, stats_docs, stats_tokens, strict=True):
                docs[term] += d
                tokens[term] += n
        if gone[0]:
            await execute("execute", self.delete_many, *gone)
        for is_new, columns in puts.items():
            if columns[0]:
                await execute("execute", self.put_many[is_new], *columns)
        terms = [t for t in docs if docs[t] or tokens[t]]
        if terms:
            await execute("execute", sql.LOG_SEARCH_STATS, self.stats, terms, [docs[t] for t in terms],
                          [tokens[t] for t in terms])

    async def after_backfill(self, execute: Execute, batch: list[dict[str, Any]]) -> None:
        await self.after_writes(execute, [(None, d) for d in batch])

    def _statement(self, params: tuple[Any, ...], new: bool) -> str:
        """write_postings for `_parameters`' result: which parts have something to do."""
        return self.write_statements[(bool(params[1]), bool(params[9]), new)]

    @staticmethod
    async def forget(execute: Execute, table: str, name: str, definition: Mapping[str, Any]) -> None:
        await execute("execute", sql.FORGET_SEARCH_STATS, stats_name(table, name))
        postings = definition.get("postings")
        if isinstance(postings, str):
            await execute("execute", sql.drop_postings(postings))


COMPACT_EVERY_S = 5.0  # between folds when the last one found little to do
COMPACT_BATCH = 20_000  # terms per fold


async def compact_forever(acquire: Callable[[], AbstractAsyncContextManager[Any]], lock: int) -> None:
    """Keep the statistics small: fold them now and then, at once again after a fold that was full
    (a bulk load leaves one delta row per document and term behind)."""
    while True:
        async with acquire() as conn:
            folded = await compact_stats(conn, lock, COMPACT_BATCH)
        if folded < COMPACT_BATCH:
            await asyncio.sleep(COMPACT_EVERY_S)


async def compact_stats(conn: Any, lock: int, limit: int = COMPACT_BATCH) -> int:
    """Fold the delta rows of up to `limit` terms into one row each (dropping terms no document
    holds any more), unless another process holds advisory lock `lock` (it is doing the same);
    returns how many rows went."""
    async with conn.transaction():
        if not await conn.fetchval(sql.TRY_XACT_LOCK, lock):
            return 0
        return int(await conn.fetchval(sql.COMPACT_SEARCH_STATS, limit) or 0)
