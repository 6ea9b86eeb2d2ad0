"""Optional means absent, as in Convex: fields left out stay out of stored documents, `UNSET`
(Convex's `undefined`) removes a field in patch and is left out of objects, and index ranges tell
a missing field (`r.eq(f, UNSET)`) from null (`r.eq(f, None)`), sorting it first."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server import UNSET
from server.core.runtime import Runtime
from server.core.values import Int64
from server.errors import FunctionFailure

from conftest import ServerProcess, call, open_runtime

SCHEMA = '''
from pydantic import BaseModel
from server import Schema, Table

class Meta(BaseModel):
    source: str | None = None
    rank: int = 0

class Note(BaseModel):
    title: str
    note: str | None = None
    priority: int = 1
    meta: Meta | None = None
    metas: list[Meta] = []

schema = Schema(
    notes=Table(Note, indexes={"by_note": ["note"]}),
    loose=Table(indexes={"by_x": ["x"]}),
)
'''

FUNCTIONS = '''
from typing import Any
from pydantic import BaseModel
from server import UNSET, action, mutation, query

class Out(BaseModel):
    a: int
    b: str | None = None
    c: str | None = None

@query(returns=list[Out])
async def typed(ctx) -> Any:
    return [{"a": 1, "b": UNSET, "c": None}, Out(a=2)]

@mutation
async def add(ctx, doc: dict) -> str:
    return await ctx.db.insert("notes", doc)

@mutation
async def add_loose(ctx, docs: list[dict]) -> list[str]:
    return [await ctx.db.insert("loose", doc) for doc in docs]

@mutation
async def add_without(ctx, title: str) -> str:
    return await ctx.db.insert("notes", {"title": title, "note": UNSET, "meta": {"source": UNSET}})

@mutation
async def add_bad(ctx) -> str:
    return await ctx.db.insert("loose", {"x": 1, "tags": ["a", UNSET]})

@query
async def get(ctx, id: str) -> Any:
    return await ctx.db.get(id)

@mutation
async def unset(ctx, id: str, field: str) -> None:
    await ctx.db.patch(id, {field: UNSET})

@mutation
async def replace_without_note(ctx, id: str, title: str) -> None:
    await ctx.db.replace(id, {"title": title, "note": UNSET})

@query
async def note_is(ctx, absent: bool, value: str | None = None) -> list[str]:
    want = UNSET if absent else value
    docs = await ctx.db.query("notes").with_index("by_note", lambda r: r.eq("note", want)).collect()
    return [d["title"] for d in docs]

@query
async def loose_order(ctx, order: str = "asc") -> list[Any]:
    docs = await ctx.db.query("loose").with_index("by_x").order(order).collect()
    return [d.get("x", "<absent>") for d in docs]

@query
async def loose_range(ctx, op: str, value: Any = None, absent: bool = False) -> list[Any]:
    bound = UNSET if absent else value
    q = ctx.db.query("loose").with_index("by_x", lambda r: getattr(r, op)("x", bound))
    return [d.get("x", "<absent>") for d in await q.collect()]

@query
async def shaped(ctx) -> Any:
    return {"kept": 1, "gone": UNSET, "nested": {"gone": UNSET, "list": [{"gone": UNSET, "kept": None}]}}

@query
async def nothing(ctx) -> Any:
    return UNSET

@query
async def array_with_unset(ctx) -> Any:
    return {"items": [1, UNSET]}

@query
async def echo(ctx, a: int | None = None, b: dict = {}) -> Any:
    return {"a": a, "b": b}

@action
async def echo_from_action(ctx) -> Any:
    return await ctx.run_query("notes:echo", {"a": UNSET, "b": {"c": UNSET, "d": 1}})
'''


def write_app(root: Path) -> Path:
    app = root / "app"
    (app / "functions").mkdir(parents=True)
    (app / "schema.py").write_text(SCHEMA)
    (app / "functions" / "notes.py").write_text(FUNCTIONS)
    return app


@pytest.fixture
async def rt(tmp_path: Path, namespace: str) -> AsyncIterator[Runtime]:
    async with open_runtime(write_app(tmp_path), namespace) as runtime:
        yield runtime


async def q(rt: Runtime, path: str, **args: Any) -> Any:
    return (await rt.call("query", path, args)).value


async def m(rt: Runtime, path: str, **args: Any) -> Any:
    return (await rt.call("mutation", path, args)).value


async def raw_doc(pg_url: str, namespace: str, table: str, doc_id: str) -> Any:
    """The jsonb PostgreSQL holds for a document, decoded by PostgreSQL itself (as text)."""
    conn = await asyncpg.connect(pg_url)
    try:
        text = await conn.fetchval(f'SELECT doc::text FROM "{namespace}"."{table}" WHERE id = $1', doc_id)
    finally:
        await conn.close()
    return json.loads(text)


async def raw_keys(pg_url: str, namespace: str, table: str, index: str) -> dict[str, bytes]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(f'SELECT id, "k_{index}" AS k FROM "{namespace}"."{table}"')
    finally:
        await conn.close()
    return {r["id"]: bytes(r["k"]) for r in rows}


async def test_an_optional_field_left_out_is_absent_in_the_stored_document(rt: Runtime, pg_url: str, namespace: str) -> None:
    left_out = await m(rt, "notes:add", doc={"title": "a", "meta": {}, "metas": [{"source": "s"}, {}]})
    doc = await q(rt, "notes:get", id=left_out)
    # Declared non-None defaults are stored; None defaults of fields not given are not, at any depth.
    assert {k: v for k, v in doc.items() if not k.startswith("_")} == {
        "title": "a", "priority": 1, "meta": {"rank": 0}, "metas": [{"source": "s", "rank": 0}, {"rank": 0}],
    }
    assert await raw_doc(pg_url, namespace, "notes", left_out) == {
        "title": "a", "priority": 1, "meta": {"rank": 0}, "metas": [{"rank": 0, "source": "s"}, {"rank": 0}],
    }
    # A None the writer gave is a null, stored as such.
    given = await m(rt, "notes:add", doc={"title": "b", "note": None, "meta": {"source": None}})
    stored = await raw_doc(pg_url, namespace, "notes", given)
    assert stored["note"] is None and stored["meta"] == {"source": None, "rank": 0} and "note" in stored
    # UNSET in the written dict is a field left out, nested too.
    unset = await m(rt, "notes:add_without", title="c")
    assert await raw_doc(pg_url, namespace, "notes", unset) == {"title": "c", "priority": 1, "meta": {"rank": 0}, "metas": []}


async def test_patch_with_unset_removes_a_field_and_replace_leaves_it_out(rt: Runtime, pg_url: str, namespace: str) -> None:
    doc_id = await m(rt, "notes:add", doc={"title": "a", "note": "hello", "priority": 3})
    await m(rt, "notes:unset", id=doc_id, field="note")
    doc = await q(rt, "notes:get", id=doc_id)
    assert "note" not in doc and doc["title"] == "a" and doc["priority"] == 3
    assert "note" not in await raw_doc(pg_url, namespace, "notes", doc_id)
    # A field with a declared default, removed, takes its default again (the model fills it in).
    await m(rt, "notes:unset", id=doc_id, field="priority")
    assert (await q(rt, "notes:get", id=doc_id))["priority"] == 1
    # replace: a field set to UNSET is left out like one not given.
    other = await m(rt, "notes:add", doc={"title": "b", "note": "x"})
    await m(rt, "notes:replace_without_note", id=other, title="b2")
    assert "note" not in await raw_doc(pg_url, namespace, "notes", other)


async def test_removing_a_required_field_is_refused_naming_it(rt: Runtime) -> None:
    doc_id = await m(rt, "notes:add", doc={"title": "keep me"})
    with pytest.raises(FunctionFailure) as err:
        await m(rt, "notes:unset", id=doc_id, field="title")
    assert "notes" in err.value.message and doc_id in err.value.message and "`title`: Field required" in err.value.message
    assert (await q(rt, "notes:get", id=doc_id))["title"] == "keep me"


async def test_unset_cannot_be_an_array_element_or_a_value_by_itself(rt: Runtime) -> None:
    with pytest.raises(FunctionFailure) as err:
        await m(rt, "notes:add_bad")
    assert "loose" in err.value.message and "tags[1]" in err.value.message and "UNSET" in err.value.message
    with pytest.raises(FunctionFailure) as err:
        await q(rt, "notes:array_with_unset")
    assert "items[1]" in err.value.message and "UNSET" in err.value.message
    with pytest.raises(FunctionFailure) as err:
        await rt.call("query", "notes:echo", {"b": {"c": [UNSET]}})
    assert "b.c[0]" in err.value.message and "UNSET" in err.value.message


async def test_unset_in_results_and_arguments_is_an_absent_field(tmp_path: Path, start_server: Any) -> None:
    server: ServerProcess = start_server("serve", app_dir=write_app(tmp_path))
    async with httpx.AsyncClient(base_url=server.url) as client:
        for fmt in ("json", "convex_encoded_json"):
            body = (await call(client, "query", "notes:shaped", format=fmt)).json()
            assert body["status"] == "success", body
            assert body["value"] == {"kept": 1, "nested": {"list": [{"kept": None}]}}
            # A function returning UNSET returns null, as a JavaScript one returning undefined.
            assert (await call(client, "query", "notes:nothing", format=fmt)).json()["value"] is None
        # Arguments from Python code: an UNSET argument is one not given (its default applies),
        # and UNSET fields inside it are left out.
        body = (await call(client, "action", "notes:echo_from_action")).json()
        assert body["value"] == {"a": None, "b": {"d": 1}}, body


async def test_declared_return_models_leave_optional_fields_not_given_out(rt: Runtime) -> None:
    assert await q(rt, "notes:typed") == [{"a": 1, "c": None}, {"a": 2}]


async def test_index_ranges_tell_absent_from_null(rt: Runtime) -> None:
    for title, fields in [("absent", {}), ("null", {"note": None}), ("text", {"note": "n"}), ("absent2", {})]:
        await m(rt, "notes:add", doc={"title": title, **fields})
    assert await q(rt, "notes:note_is", absent=True) == ["absent", "absent2"]
    assert await q(rt, "notes:note_is", absent=False, value=None) == ["null"]
    assert await q(rt, "notes:note_is", absent=False, value="n") == ["text"]
    # Patching a field away moves the document in the index: from eq(None) to eq(UNSET).
    moved = await m(rt, "notes:add", doc={"title": "was null", "note": None})
    await m(rt, "notes:unset", id=moved, field="note")
    assert await q(rt, "notes:note_is", absent=True) == ["absent", "absent2", "was null"]
    assert await q(rt, "notes:note_is", absent=False, value=None) == ["null"]


# One value of each Convex type, in Convex's order (undefined < null < int64 < float64 < boolean <
# string < bytes < array < object), as stored under `x` (None of them: the field is absent).
ORDERED: list[Any] = [None, Int64(-5), Int64(7), -1.5, 2, False, True, "a", "b", b"\x00", [1], {"k": 1}]


async def test_absent_sorts_before_null_and_every_value(rt: Runtime) -> None:
    docs: list[dict[str, Any]] = [{}, *({"x": v} for v in ORDERED)]
    random.Random(7).shuffle(docs)
    await m(rt, "notes:add_loose", docs=docs)
    expected = ["<absent>", *ORDERED]
    assert await q(rt, "notes:loose_order") == expected
    assert await q(rt, "notes:loose_order", order="desc") == expected[::-1]
    assert await q(rt, "notes:loose_range", op="lt", value=None) == ["<absent>"]
    assert await q(rt, "notes:loose_range", op="gt", absent=True) == ORDERED
    assert await q(rt, "notes:loose_range", op="lte", absent=True) == ["<absent>"]
    assert await q(rt, "notes:loose_range", op="gte", value=None) == ORDERED


async def test_keys_of_absent_fields_keep_the_encoding_stored_databases_hold(tmp_path: Path, namespace: str, pg_url: str) -> None:
    """A missing field's index key starts with the tag 0x01 and null's with 0x02, as since the first
    release: keys already stored (written by inserts, or by backfill when an index is added) keep
    their meaning, so nothing is rebuilt. Documents written earlier with an explicit null for an
    optional field left out stay null: they answer eq(None), and patching UNSET makes them absent."""
    app = write_app(tmp_path)
    no_index = SCHEMA.replace('indexes={"by_note": ["note"]}', "indexes={}")
    (app / "schema.py").write_text(no_index)
    async with open_runtime(app, namespace) as runtime:
        before = {
            "absent": await m(runtime, "notes:add", doc={"title": "absent"}),
            "null": await m(runtime, "notes:add", doc={"title": "null", "note": None}),
        }
        (app / "schema.py").write_text(SCHEMA)  # the index is added: keys are backfilled
        await runtime.load()
        backfilled = await raw_keys(pg_url, namespace, "notes", "by_note")
        after = {
            "absent": await m(runtime, "notes:add", doc={"title": "absent after"}),
            "null": await m(runtime, "notes:add", doc={"title": "null after", "note": None}),
        }
        written = await raw_keys(pg_url, namespace, "notes", "by_note")
        for kind, tag in (("absent", 0x01), ("null", 0x02)):
            assert backfilled[before[kind]][0] == tag and written[after[kind]][0] == tag
        assert await q(runtime, "notes:note_is", absent=True) == ["absent", "absent after"]
        assert await q(runtime, "notes:note_is", absent=False, value=None) == ["null", "null after"]
        await m(runtime, "notes:unset", id=before["null"], field="note")
        assert await q(runtime, "notes:note_is", absent=True) == ["absent", "null", "absent after"]
        assert (await raw_keys(pg_url, namespace, "notes", "by_note"))[before["null"]][0] == 0x01
