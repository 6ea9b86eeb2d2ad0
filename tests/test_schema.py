"""Applying schema.py to PostgreSQL: tables, indexes, backfills, and refused changes."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest
from pydantic import BaseModel, Field

from server import Schema, Table
from server.core import database, sql
from server.errors import AppLoadError, SchemaError

from conftest import open_runtime

FUNCTIONS = '''
from typing import Any
from server import mutation, query

@mutation
async def add(ctx, doc: dict) -> str:
    return await ctx.db.insert("people", doc)

@query
async def by(ctx, index: str, field: str, value: Any) -> list[str]:
    docs = await ctx.db.query("people").with_index(index, lambda q: q.eq(field, value)).collect()
    return [d["name"] for d in docs]
'''


def write_app(app: Path, model_body: str, indexes: str) -> None:
    (app / "functions").mkdir(parents=True, exist_ok=True)
    (app / "functions" / "people.py").write_text(FUNCTIONS)
    fields = "".join(f"    {line}\n" for line in model_body.strip().splitlines())
    (app / "schema.py").write_text(
        "from pydantic import BaseModel\nfrom server import Schema, Table\n\n"
        f"class Person(BaseModel):\n{fields}\n"
        f"schema = Schema(people=Table(Person, indexes={indexes}))\n"
    )


async def test_index_added_later_is_backfilled(tmp_path: Path, namespace: str, pg_url: str) -> None:
    app = tmp_path / "app"
    write_app(app, "name: str\ncity: str = 'x'\n", "{}")
    async with open_runtime(app, namespace) as rt:
        for name, city in (("ann", "oslo"), ("bob", "rome"), ("cy", "oslo")):
            await rt.call("mutation", "people:add", {"doc": {"name": name, "city": city}})
        write_app(app, "name: str\ncity: str = 'x'\n", "{'by_city': ['city']}")
        await rt.load()
        assert (await rt.call("query", "people:by", {"index": "by_city", "field": "city", "value": "oslo"})).value == ["ann", "cy"]
        # Changing the index's fields recomputes every key.
        write_app(app, "name: str\ncity: str = 'x'\n", "{'by_city': ['name']}")
        await rt.load()
        assert (await rt.call("query", "people:by", {"index": "by_city", "field": "name", "value": "bob"})).value == ["bob"]
        # Removing it drops the key column; the index is gone for queries.
        write_app(app, "name: str\ncity: str = 'x'\n", "{}")
        await rt.load()
        conn = await asyncpg.connect(pg_url)
        try:
            cols = {r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'people'", namespace)}
        finally:
            await conn.close()
        assert cols == {"id", "creation_time", "doc", "k_by_creation_time"}
        with pytest.raises(Exception, match="has no index 'by_city'"):
            await rt.call("query", "people:by", {"index": "by_city", "field": "city", "value": "oslo"})


async def test_violating_schema_change_is_refused_and_old_version_keeps_serving(tmp_path: Path, namespace: str) -> None:
    app = tmp_path / "app"
    write_app(app, "name: str\nage: int | None = None\n", "{}")
    async with open_runtime(app, namespace) as rt:
        doc_id = (await rt.call("mutation", "people:add", {"doc": {"name": "ann"}})).value
        write_app(app, "name: str\nage: int\n", "{}")  # now every person needs an age
        with pytest.raises(SchemaError) as err:
            await rt.load()
        message = str(err.value)
        # ann's age was left out, so it is absent (not null): the new model finds it missing.
        assert "people" in message and doc_id in message and "`age`: Field required" in message
        # The runtime still serves the version it had.
        assert (await rt.call("mutation", "people:add", {"doc": {"name": "bob"}})).value
        # A compatible change (a new optional field) is accepted.
        write_app(app, "name: str\nage: int | None = None\nemail: str | None = None\n", "{}")
        await rt.load()
        assert (await rt.call("mutation", "people:add", {"doc": {"name": "cy", "email": "c@x"}})).value


def test_invalid_schema_definitions_are_explained() -> None:
    class M(BaseModel):
        a: int

    with pytest.raises(SchemaError, match="field 'b' is not in model M"):
        Schema(t=Table(M, indexes={"by_b": ["b"]}))
    with pytest.raises(SchemaError, match="reserved"):
        Schema(_t=Table(M))
    with pytest.raises(SchemaError, match="index name 'by_creation_time' is reserved"):
        Schema(t=Table(M, indexes={"by_creation_time": ["a"]}))
    with pytest.raises(SchemaError, match="table name 'bad-name' is invalid"):
        Schema(**{"bad-name": Table(M)})
    with pytest.raises(SchemaError, match="give a non-empty list"):
        Schema(t=Table(M, indexes={"by_a": "a"}))
    with pytest.raises(SchemaError, match="cannot be indexed"):
        Schema(t=Table(M, indexes={"by_a": ["_creationTime"]}))
    with pytest.raises(SchemaError, match="must be a Table"):
        Schema(t=M)  # type: ignore[arg-type]


async def test_app_without_schema_file_loads(tmp_path: Path, namespace: str) -> None:
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    (app / "functions" / "hello.py").write_text("from server import query\n@query\nasync def hi(ctx) -> str:\n    return 'hi'\n")
    async with open_runtime(app, namespace) as rt:
        assert (await rt.call("query", "hello:hi", {})).value == "hi"


async def test_broken_function_module_reports_its_error(tmp_path: Path, namespace: str) -> None:
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    (app / "functions" / "bad.py").write_text("from server import query\n@query\ndef not_async(ctx):\n    return 1\n")
    with pytest.raises(AppLoadError) as err:
        async with open_runtime(app, namespace):
            pass
    assert str(err.value) == "functions/bad.py:2: TypeError: not_async: Ripple functions must be `async def`"
    assert isinstance(err.value.__cause__, TypeError)


async def test_function_exported_under_two_names_keeps_its_first_path(tmp_path: Path, namespace: str) -> None:
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    (app / "functions" / "mod.py").write_text(
        "from server import query\n@query\nasync def get(ctx) -> str:\n    return 'got'\nalias = get\n"
    )
    async with open_runtime(app, namespace) as rt:
        registry = rt.app.registry
        fn = registry.resolve("mod:get")
        assert registry.resolve("mod:alias") is fn
        assert fn.path == "mod:get" and registry.path_of(fn) == "mod:get"
        assert (await rt.call("query", "mod:alias", {})).value == "got"
        assert (await rt.call("query", "mod:get", {})).value == "got"


ALIASED_FUNCTIONS = FUNCTIONS + '''
@mutation
async def patch(ctx, id: str, fields: dict) -> dict:
    await ctx.db.patch(id, fields)
    return await ctx.db.get(id)
'''


def write_aliased_app(app: Path, extra_field: str = "") -> None:
    (app / "functions").mkdir(parents=True, exist_ok=True)
    (app / "functions" / "people.py").write_text(ALIASED_FUNCTIONS)
    (app / "schema.py").write_text(
        "from pydantic import BaseModel, ConfigDict, Field\nfrom pydantic.alias_generators import to_camel\n"
        "from server import Schema, Table\n\n"
        "class Address(BaseModel):\n    model_config = ConfigDict(alias_generator=to_camel)\n    zip_code: str\n\n"
        "class Person(BaseModel):\n    name: str\n    camel_name: str = Field(alias='camelName')\n"
        f"    home: Address | None = None\n{extra_field}\n"
        "schema = Schema(people=Table(Person, indexes={'by_camel': ['camelName']}))\n"
    )


async def test_aliased_fields_are_stored_by_alias_and_validate_again(tmp_path: Path, namespace: str) -> None:
    app = tmp_path / "app"
    write_aliased_app(app)
    async with open_runtime(app, namespace) as rt:
        ann = (await rt.call("mutation", "people:add", {"doc": {"name": "ann", "camelName": "A", "home": {"zipCode": "1"}}})).value
        # The Python field name is accepted on input too; either way the alias is stored.
        bob = (await rt.call("mutation", "people:add", {"doc": {"name": "bob", "camel_name": "B"}})).value
        doc = (await rt.call("mutation", "people:patch", {"id": ann, "fields": {"name": "anne"}})).value
        assert {k: doc[k] for k in ("name", "camelName", "home")} == {"name": "anne", "camelName": "A", "home": {"zipCode": "1"}}
        doc = (await rt.call("mutation", "people:patch", {"id": bob, "fields": {"home": {"zipCode": "2"}}})).value
        assert doc["camelName"] == "B" and doc["home"] == {"zipCode": "2"} and "camel_name" not in doc
        assert (await rt.call("query", "people:by", {"index": "by_camel", "field": "camelName", "value": "B"})).value == ["bob"]
        # A model change re-validates every stored document: the stored (aliased) form passes.
        write_aliased_app(app, "    email: str | None = None\n")
        await rt.load()
        assert (await rt.call("mutation", "people:patch", {"id": bob, "fields": {"email": "b@x"}})).value["email"] == "b@x"


def test_alias_mistakes_are_schema_errors() -> None:
    class Aliased(BaseModel):
        camel_name: str = Field(alias="camelName")

    with pytest.raises(SchemaError, match="field 'camel_name' is not in model Aliased \\(it is stored as 'camelName'\\)"):
        Schema(t=Table(Aliased, indexes={"by_c": ["camel_name"]}))

    class Inner(BaseModel):
        x: int = Field(serialization_alias="y")

    class Outer(BaseModel):
        inner: list[Inner]

    with pytest.raises(SchemaError, match=r"Inner\.x would be stored as 'y'"):
        Schema(t=Table(Outer))

    class Underscored(BaseModel):
        secret: int = Field(alias="_secret")

    with pytest.raises(SchemaError, match="table t: field '_secret' starts with '_'"):
        Schema(t=Table(Underscored))


async def test_tables_named_like_builtin_types_work_and_catalog_names_are_refused(tmp_path: Path, namespace: str) -> None:
    with pytest.raises(SchemaError, match="'pg_class' is reserved"):
        Schema(pg_class=Table())
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    (app / "schema.py").write_text(
        "from server import Schema, Table\n"
        "schema = Schema(text=Table(indexes={'by_a': ['a']}), date=Table(), point=Table())\n"
    )
    (app / "functions" / "cat.py").write_text(
        "from server import mutation, query\n"
        "@mutation\nasync def add(ctx, table: str, a: int) -> str:\n    return await ctx.db.insert(table, {'a': a})\n"
        "@query\nasync def by_a(ctx, a: int) -> list[int]:\n"
        "    docs = await ctx.db.query('text').with_index('by_a', lambda q: q.eq('a', a)).collect()\n"
        "    return [d['a'] for d in docs]\n"
        "@query\nasync def count(ctx, table: str) -> int:\n    return len(await ctx.db.query(table).collect())\n"
    )
    async with open_runtime(app, namespace) as rt:
        for a in (1, 2, 2):
            await rt.call("mutation", "cat:add", {"table": "text", "a": a})
        await rt.call("mutation", "cat:add", {"table": "point", "a": 9})
        assert (await rt.call("query", "cat:by_a", {"a": 2})).value == [2, 2]
        assert (await rt.call("query", "cat:count", {"table": "text"})).value == 3
        assert (await rt.call("query", "cat:count", {"table": "point"})).value == 1
        await rt.load()  # applying the schema again with such tables present still works


async def test_backfill_reads_in_batches(tmp_path: Path, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "BACKFILL_BATCH", 3)  # 10 documents: 4 batches, the last partial
    app = tmp_path / "app"
    write_app(app, "name: str\ncity: str = 'x'\n", "{}")
    async with open_runtime(app, namespace) as rt:
        for i in range(10):
            await rt.call("mutation", "people:add", {"doc": {"name": f"p{i}", "city": "oslo" if i % 3 else "rome"}})
        write_app(app, "name: str\ncity: str = 'x'\n", "{'by_city': ['city'], 'by_name': ['name']}")
        await rt.load()
        by = "people:by"
        assert (await rt.call("query", by, {"index": "by_city", "field": "city", "value": "rome"})).value == ["p0", "p3", "p6", "p9"]
        assert len((await rt.call("query", by, {"index": "by_city", "field": "city", "value": "oslo"})).value) == 6
        assert (await rt.call("query", by, {"index": "by_name", "field": "name", "value": "p7"})).value == ["p7"]


def test_index_name_length_limits() -> None:
    class M(BaseModel):
        a: int

    Schema(t=Table(M, indexes={"i" * 61: ["a"]}))  # k_ + 61 = 63 characters: fits
    with pytest.raises(SchemaError, match="longer than 61 characters"):
        Schema(t=Table(M, indexes={"i" * 62: ["a"]}))
    with pytest.raises(SchemaError, match="index name 'by-a' is invalid"):
        Schema(t=Table(M, indexes={"by-a": ["a"]}))


def test_postgres_index_names_are_short_unique_and_stable() -> None:
    assert sql.index_name("people", "by_city") == "people__by_city"  # what existing deployments have
    table, a, b = "t" * 40, "by_" + "x" * 30 + "_a", "by_" + "x" * 30 + "_b"
    na, nb = sql.index_name(table, a), sql.index_name(table, b)
    assert na != nb and len(na) <= 63 and len(nb) <= 63
    assert na == sql.index_name(table, a) and na.startswith("t" * 24 + "__by_")


async def test_long_index_names_that_share_a_prefix_each_get_an_index(tmp_path: Path, namespace: str, pg_url: str) -> None:
    table, a, b = "people_" + "t" * 40, "by_" + "x" * 30 + "_a", "by_" + "x" * 30 + "_b"
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    (app / "schema.py").write_text(
        f"from server import Schema, Table\nschema = Schema({table}=Table(indexes={{'{a}': ['a'], '{b}': ['b']}}))\n"
    )
    (app / "functions" / "p.py").write_text(
        "from server import mutation, query\n"
        f"@mutation\nasync def add(ctx, a: int, b: int) -> str:\n    return await ctx.db.insert('{table}', {{'a': a, 'b': b}})\n"
        f"@query\nasync def by(ctx, index: str, field: str, v: int) -> list[int]:\n"
        f"    docs = await ctx.db.query('{table}').with_index(index, lambda q: q.eq(field, v)).collect()\n"
        "    return [d['a'] for d in docs]\n"
    )
    async with open_runtime(app, namespace) as rt:
        await rt.call("mutation", "p:add", {"a": 1, "b": 2})
        await rt.call("mutation", "p:add", {"a": 2, "b": 1})
        assert (await rt.call("query", "p:by", {"index": a, "field": "a", "v": 1})).value == [1]
        assert (await rt.call("query", "p:by", {"index": b, "field": "b", "v": 1})).value == [2]
    conn = await asyncpg.connect(pg_url)
    try:
        indexed = {r["indexdef"].rsplit("(", 1)[1].rstrip(")") for r in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2", namespace, table)}
    finally:
        await conn.close()
    assert {f"k_{a}", f"k_{b}", "k_by_creation_time"} <= indexed


async def test_clashing_relation_names_are_refused(tmp_path: Path, namespace: str) -> None:
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    for tables, message in (
        ("a__b=Table(indexes={'c': ['x']}), a=Table(indexes={'b__c': ['x']})", "index a.b__c would be the PostgreSQL relation 'a__b__c', which index a__b.c already is"),
        ("people=Table(indexes={'by_city': ['city']}), people__by_city=Table()", "index people.by_city would be the PostgreSQL relation 'people__by_city', which table people__by_city already is"),
    ):
        (app / "schema.py").write_text(f"from server import Schema, Table\nschema = Schema({tables})\n")
        with pytest.raises(SchemaError, match=re.escape(message)):
            async with open_runtime(app, namespace):
                pass
