"""An import writes its documents in batches (server/core/bulk_writes.py). In process against a
real PostgreSQL, what a batched import writes is compared with what one insert (and, for
--replace, one delete) per document writes, as imports wrote before: rows with their index keys
and vector columns, search postings and statistics, the change log's write set, and what
indexes, search and vector search read back (docs/import-export.md)."""

from __future__ import annotations

import io
import json
import random
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.core import bulk_writes, keys, snapshot, snapshot_read
from server.core.documents import DatabaseWriter
from server.core.ids import new_id
from server.core.runtime import Runtime
from server.core.search.text import (
    MAX_TERM_BYTES,
    TextIndex,
    filter_prefixes,
    filtered_term_key,
    term_key,
    tokenize,
)
from server.core.transaction import Transaction
from server.core.values import from_convex_json

from conftest import APPS, _drop_schemas, open_runtime

APP = APPS / "portable"
B = bulk_writes.BATCH
TABLES = ("authors", "notes", "messages", "points")
WORDS = "quick brown fox river stone moon garden quiet storm amber lantern silver".split()
Docs = dict[str, list[dict[str, Any]]]


@pytest.fixture
async def runtimes(namespace: str, pg_url: str) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """The portable app twice, each over a fresh schema: one written a document at a time, the
    other by imports."""
    second = "t_" + secrets.token_hex(6)
    try:
        async with open_runtime(APP, namespace) as one, open_runtime(APP, second) as other:
            yield one, other
    finally:
        await _drop_schemas(pg_url, second)


def _documents(rt: Runtime, rng: random.Random, sizes: dict[str, int], ids: dict[str, list[str]] | None = None) -> Docs:
    """Documents as an import file holds them (encoded JSON, with `_id` and `_creationTime`);
    `ids`: reuse these ids first (a --replace that keeps some documents)."""
    out: Docs = {}
    for table, count in sizes.items():
        number = rt.catalog.by_name[table].number
        reused = list((ids or {}).get(table, []))[: count // 2]
        docs = []
        for i in range(count):
            if table == "authors":
                fields: dict[str, Any] = {"name": f"{rng.choice(WORDS)} {i}", "age": rng.random() * 90}
            elif table == "notes":
                fields = {"n": float(i), "tags": rng.sample(WORDS, 2), "nested": {"ok": rng.random() < 0.5}}
                if i % 7 == 0:
                    fields["big"] = {"$integer": "AQAAAAAAAAA="}  # an Int64, as encoded JSON writes it
            elif table == "messages":
                fields = {"body": " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12))),
                          "channel": rng.choice("abc")}
            else:  # a vector of the wrong length is stored but left out of the index
                fields = {"embedding": [rng.uniform(-1, 1) for _ in range(3 if i % 9 else 2)], "kind": rng.choice("xy")}
            doc_id = reused[i] if i < len(reused) else new_id(number)
            docs.append({"_id": doc_id, "_creationTime": 1.7e12 + rng.random() * 1e9, **fields})
        out[table] = docs
    return out


async def _one_by_one(rt: Runtime, docs: Docs, replace: bool = False) -> None:
    """What an import did before batches: a delete per old document, an insert per new one."""

    async def body(writer: DatabaseWriter, tx: Transaction) -> None:
        tx.unlimited = True
        for table in docs if replace else ():
            for row in await tx.execute("fetch", rt.catalog.by_name[table].sql.scan_all):
                await writer.delete(table, row["id"])
        for table, lines in docs.items():
            for d in lines:
                fields = {k: v for k, v in d.items() if k not in ("_id", "_creationTime")}
                await writer.insert(table, from_convex_json(fields), doc_id=d["_id"], creation_time=d["_creationTime"])

    await rt.system_transaction(body)


def _jsonl(docs: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


async def _import(rt: Runtime, docs: Docs, mode: str, report: list[dict[str, Any]] | None = None) -> dict[str, int]:
    sources = [snapshot_read.table_plan(table, "jsonl", io.BytesIO(_jsonl(lines)), rt.catalog).tables[0]
               for table, lines in docs.items()]
    return await snapshot.run_import(rt, snapshot_read.Plan(tables=sources), mode,
                                     None if report is None else report.append)


async def _stored(rt: Runtime) -> dict[str, Any]:
    """Everything the tables, the search index and the change log hold: rows (every column, the
    index keys and vector columns among them) in id order, postings, the statistics as the sums
    searches read, and each commit's write set by document."""
    postings = next(d for d in rt.catalog.by_name["messages"].derived if isinstance(d, TextIndex)).postings
    async with rt.db.acquire() as conn:
        out: dict[str, Any] = {t: [dict(r) for r in await conn.fetch(f'SELECT * FROM "{t}" ORDER BY id')] for t in TABLES}
        out["postings"] = [dict(r) for r in await conn.fetch(f'SELECT * FROM "{postings}" ORDER BY term, id')]
        out["stats"] = [tuple(r) for r in await conn.fetch(
            "SELECT idx, term, sum(docs), sum(tokens) FROM _ripple_search_stats GROUP BY idx, term "
            "HAVING sum(docs) <> 0 OR sum(tokens) <> 0 ORDER BY idx, term")]
        out["writes"] = [{w["id"]: w for w in r["writes"]} for r in await conn.fetch("SELECT writes FROM _ripple_commits ORDER BY ts")]
    return out


async def _read_back(rt: Runtime, docs: Docs) -> list[Any]:
    """Reads through an index, full-text search (with a filter) and vector search."""
    out: list[Any] = []
    for author in docs["authors"][:: B // 4]:
        out.append((await rt.call("query", "data:author_named", {"name": author["name"]})).value)
    assert all(out)
    for text, channel in (("quick", None), ("moon storm", "b"), ("sil", None)):
        out.append((await rt.call("query", "data:search", {"text": text, "channel": channel})).value)
    for kind in (None, "x"):
        out.append((await rt.call("action", "data:nearest", {"vector": [0.3, -0.2, 0.9], "kind": kind})).value)
    return out


async def test_a_batched_import_writes_what_an_insert_per_document_wrote(runtimes: tuple[Runtime, Runtime]) -> None:
    """Tables of each kind (a plain index, no model, a search index, a vector index: rows by
    executemany), past a batch's end (notes, messages) or within one; then a --replace that
    keeps half the ids. Same rows, postings, statistics, write sets and reads."""
    one, batched = runtimes
    rng = random.Random(7)
    sizes = {"authors": B // 4, "notes": B + B // 4, "messages": B + 1, "points": B // 4}
    first = _documents(one, rng, sizes)
    await _one_by_one(one, first)
    assert await _import(batched, first, "empty") == sizes
    before = await _stored(one)
    assert [len(before[t]) for t in sizes] == list(sizes.values()) and before["postings"] and before["stats"]
    assert await _stored(batched) == before
    assert list(before["writes"][0]) == [d["_id"] for t in sizes for d in first[t]]  # in file order
    assert await _read_back(batched, first) == await _read_back(one, first)

    second = _documents(one, rng, {t: n + 5 for t, n in sizes.items()}, {t: [d["_id"] for d in first[t]] for t in sizes})
    await _one_by_one(one, second, replace=True)
    assert await _import(batched, second, "replace") == {t: n + 5 for t, n in sizes.items()}
    after = await _stored(one)
    kept = {d["_id"] for d in second["messages"]} & {d["_id"] for d in first["messages"]}
    assert len(kept) == (sizes["messages"] + 5) // 2 and after["writes"][1].keys() >= kept
    assert await _stored(batched) == after
    assert await _read_back(batched, second) == await _read_back(one, second)


@pytest.mark.parametrize(("table", "at", "bad", "says"), [
    ("messages", B + B // 2, {"body": 12.5, "channel": "a"}, "`body`: Input should be a valid string"),
    ("authors", B, {"name": "x" * 3000, "age": 1.0}, "by_name"),  # an index key PostgreSQL could not store
    ("notes", B + 1, {"n": {"$integer": "not base64"}}, "$integer"),
])
async def test_a_bad_document_in_a_batch_is_named_by_its_line_and_nothing_is_written(
        runtimes: tuple[Runtime, Runtime], table: str, at: int, bad: dict[str, Any], says: str) -> None:
    """Replacing a table with 2.5 batches whose line `at` cannot be written: refused by that
    line, as one insert per document refused it, with the table, postings, statistics and
    change log as they were."""
    _, rt = runtimes
    rng = random.Random(11)
    await _import(rt, _documents(rt, rng, {table: 10}), "empty")
    before = await _stored(rt)
    async with rt.db.acquire() as conn:
        stats = await conn.fetch("SELECT * FROM _ripple_search_stats ORDER BY idx, term, docs, tokens")
    docs = _documents(rt, rng, {table: 2 * B + B // 2})
    docs[table][at - 1] = {"_id": docs[table][at - 1]["_id"], **bad}
    docs[table][-1] = {"_id": docs[table][-1]["_id"], **bad}  # a later bad line is not the one named
    report: list[dict[str, Any]] = []
    with pytest.raises(snapshot_read.ImportRefused) as refused:
        await _import(rt, docs, "replace", report)
    assert str(refused.value).startswith(f"{table}.jsonl line {at} (table {table}): "), refused.value
    assert says in str(refused.value)
    assert report == [{"documents": {table: 2 * B + B // 2}}]
    assert await _stored(rt) == before
    async with rt.db.acquire() as conn:
        assert await conn.fetch("SELECT * FROM _ripple_search_stats ORDER BY idx, term, docs, tokens") == stats


@pytest.mark.parametrize("at", [B, B + 1, 2 * B + 5])
async def test_append_refuses_an_id_already_present_in_any_batch(runtimes: tuple[Runtime, Runtime], at: int) -> None:
    """--append of 2 batches and 5 documents: an `_id` the table holds already, on the last line
    of a batch, the first of the next or the file's last, refuses the import by its line; an
    invalid document before it in the same batch is named instead, as it came first."""
    _, rt = runtimes
    rng = random.Random(at)
    present = _documents(rt, rng, {"notes": B + 10})
    await _import(rt, present, "empty")
    before = await _stored(rt)
    docs = _documents(rt, rng, {"notes": 2 * B + 5})
    taken = present["notes"][B + 3]["_id"]  # a document of the first import's second batch
    docs["notes"][at - 1]["_id"] = taken
    with pytest.raises(snapshot_read.ImportRefused) as refused:
        await _import(rt, docs, "append")
    assert str(refused.value) == f"notes.jsonl line {at}: table notes already has a document {taken}"
    assert await _stored(rt) == before

    docs["notes"][at - 2]["n"] = {"$integer": "not base64"}
    with pytest.raises(snapshot_read.ImportRefused) as refused:
        await _import(rt, docs, "append")
    assert str(refused.value).startswith(f"notes.jsonl line {at - 1} (table notes): "), refused.value

    fresh = _documents(rt, rng, {"notes": 2 * B + 5})
    assert await _import(rt, fresh, "append") == {"notes": 2 * B + 5}
    rows = (await _stored(rt))["notes"]
    assert {r["id"] for r in rows} == {d["_id"] for d in present["notes"] + fresh["notes"]}


async def test_search_postings_of_many_changes_at_once_are_those_of_one_change_at_a_time(
        runtimes: tuple[Runtime, Runtime]) -> None:
    """TextIndex.after_writes with inserts, updates (postings upserted and removed, a filter
    value changed, a body emptied) and deletes together, against after_write for each in turn."""
    one, other = runtimes
    rng = random.Random(3)
    docs = _documents(one, rng, {"messages": 60})
    for rt in runtimes:
        await _import(rt, docs, "empty")
    olds = docs["messages"]
    changes: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = [(d, None) for d in olds[:10]]
    for i, d in enumerate(olds[10:50]):
        body = "" if i % 13 == 0 else (d["body"] + " " + rng.choice(WORDS)) if i % 2 else " ".join(rng.sample(WORDS, 4))
        changes.append((d, {**d, "body": body, "channel": d["channel"] if i % 3 else "z"}))
    changes += [(None, d) for d in _documents(one, rng, {"messages": 10})["messages"]]
    index = next(d for d in one.catalog.by_name["messages"].derived if isinstance(d, TextIndex))

    async def one_at_a_time(writer: DatabaseWriter, tx: Transaction) -> None:
        for old, new in changes:
            await index.after_write(tx.execute, old, new)

    async def all_at_once(writer: DatabaseWriter, tx: Transaction) -> None:
        await index.after_writes(tx.execute, changes)

    before = await _stored(one)
    await one.system_transaction(one_at_a_time)
    await other.system_transaction(all_at_once)
    mine, theirs = await _stored(one), await _stored(other)
    assert mine["postings"] != before["postings"] and mine["stats"] != before["stats"]
    assert theirs["postings"] == mine["postings"] and theirs["stats"] == mine["stats"]


def _search_keys_one_at_a_time(index: TextIndex, doc: dict[str, Any]) -> list[bytes]:
    """TextIndex.keys as its docstring defines it."""
    filters = index.filter_values(doc)
    terms = list(dict.fromkeys(index.terms(doc)))
    out = [term_key(t, filters) for t in terms]
    for count in filter_prefixes(len(filters)):
        out += [filtered_term_key(filters[:count], t) for t in terms]
    return out


values = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=4))


@settings(max_examples=50)
@given(body=st.text(max_size=80), filters=st.lists(st.one_of(values, st.just(keys.UNDEFINED)), min_size=0, max_size=3))
def test_search_write_set_keys_are_the_term_and_filter_keys(body: str, filters: list[Any]) -> None:
    fields = [f"f{i}" for i in range(len(filters))]
    index = TextIndex("t", "s", "body", fields)
    doc = {"_id": "x", "_creationTime": 1.0, "body": body, **{f: v for f, v in zip(fields, filters, strict=True)
                                                                if v is not keys.UNDEFINED}}
    assert index.keys(doc) == _search_keys_one_at_a_time(index, doc)


@settings(max_examples=50)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=120) | st.from_regex(r"(\w{5,12}\W){1,5}", fullmatch=True))
def test_tokenize_drops_exactly_the_runs_of_32_bytes_or_more(text: str) -> None:
    expected = [m.group().lower() for m in re.finditer(r"[^\W_]+", text) if len(m.group().encode()) < MAX_TERM_BYTES]
    assert tokenize(text) == expected
