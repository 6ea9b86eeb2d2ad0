"""The dashboard's system functions (`_system/dashboard:*`, server/core/dashboard.py): in-process
over a real PostgreSQL for what they answer, and through a real `ripple serve` for who may call
them (admin only) and for live results over the websocket (the page at /_ripple/ relies on both)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from client_sdk import RippleClient
from server import Crons, Int64, codegen
from server.config import StorageConfig
from server.core import dashboard
from server.core.loader import load_app
from server.core.runtime import Runtime
from server.core.scheduler.loop import Scheduler
from server.core.values import to_convex_json
from server.errors import FunctionFailure, FunctionNotFound

from conftest import APPS, ROOT, ServerProcess, module_server, open_runtime

PORTABLE = APPS / "portable"
SCHEDULER = APPS / "scheduler"
KEY = "k-" + secrets.token_hex(16)


async def system(runtime: Runtime, kind: Any, name: str, **args: Any) -> Any:
    outcome = await runtime.call(kind, f"_system/dashboard:{name}", args, allow_internal=True)
    return outcome.value


@pytest.fixture
async def portable(namespace: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with open_runtime(PORTABLE, namespace, storage=StorageConfig(local_dir=tmp_path / "files")) as runtime:
        yield runtime


async def test_tables_lists_user_tables_then_the_readable_system_ones(portable: Runtime) -> None:
    tables = await system(portable, "query", "tables")
    assert [t["name"] for t in tables] == ["authors", "posts", "notes", "messages", "points", "_scheduled_functions", "_cron_jobs",
                                          "_storage"]
    authors = tables[0]
    assert authors["schema"]["required"] == ["name", "age"] and tables[2]["schema"] is None  # notes: any object
    assert "likes" in tables[1]["schema"]["properties"]  # an Int64 field: its bounds are no float64, yet sent
    assert {k: v for k, v in authors.items() if k != "schema"} == {
        "name": "authors", "system": False, "indexes": ["by_id", "by_creation_time", "by_name"], "searchIndexes": []}
    assert not tables[4]["system"] and all(t["system"] for t in tables[5:]) and tables[3]["searchIndexes"]


async def test_insert_edit_and_delete_go_through_the_schema(portable: Runtime) -> None:
    ada = await system(portable, "mutation", "insert", table="authors", document={"name": "Ada", "age": 36})
    with pytest.raises(FunctionFailure, match="age"):
        await system(portable, "mutation", "insert", table="authors", document={"name": "Bob", "age": "old"})
    with pytest.raises(FunctionFailure, match="nosuch"):
        await system(portable, "mutation", "insert", table="nosuch", document={})
    await system(portable, "mutation", "patch", id=ada, fields={"age": 37})
    doc = await system(portable, "query", "document", id=ada)
    assert (doc["name"], doc["age"]) == ("Ada", 37)
    with pytest.raises(FunctionFailure, match="age"):
        await system(portable, "mutation", "patch", id=ada, fields={"age": None})
    # A whole document back from the page, system fields and all, replaces the fields.
    await system(portable, "mutation", "replace", id=ada, document={**doc, "name": "Ada L."})
    assert (await system(portable, "query", "document", id=ada))["name"] == "Ada L."
    bob = await system(portable, "mutation", "insert", table="authors", document={"name": "Bob", "age": 41})
    assert await system(portable, "mutation", "delete", ids=[ada, bob, ada]) == 2
    assert await system(portable, "query", "document", id=ada) is None
    assert await system(portable, "mutation", "delete", ids=[ada]) == 0


async def test_page_orders_filters_and_paginates(portable: Runtime) -> None:
    for i in range(7):
        await system(portable, "mutation", "insert", table="authors", document={"name": f"a{i}", "age": i * 10})
    first = await system(portable, "query", "page", table="authors", paginationOpts={"numItems": 3, "cursor": None})
    assert [d["name"] for d in first["page"]] == ["a6", "a5", "a4"] and not first["isDone"]
    rest = await system(portable, "query", "page", table="authors",
                        paginationOpts={"numItems": 10, "cursor": first["continueCursor"]})
    assert [d["name"] for d in rest["page"]] == ["a3", "a2", "a1", "a0"] and rest["isDone"]

    async def names(*filters: dict[str, Any], order: str = "asc") -> list[str]:
        result = await system(portable, "query", "page", table="authors", order=order, filters=list(filters),
                              paginationOpts={"numItems": 50, "cursor": None})
        return [d["name"] for d in result["page"]]

    assert await names({"field": "age", "op": "gte", "value": 40}) == ["a4", "a5", "a6"]
    assert await names({"field": "age", "op": "gt", "value": 10}, {"field": "age", "op": "lt", "value": 40}) == ["a2", "a3"]
    assert await names({"field": "name", "op": "eq", "value": "a3"}) == ["a3"]
    assert len(await names({"field": "name", "op": "neq", "value": "a3"})) == 6
    # Convex's order of values: every number sorts below every string.
    assert (await names({"field": "age", "op": "lt", "value": "zero"}, order="desc"))[:1] == ["a6"]
    assert await names({"field": "missing", "op": "eq", "value": None}) == []
    with pytest.raises(FunctionFailure, match="not a field name"):
        await names({"field": "a..b", "op": "eq", "value": 1})
    with pytest.raises(Exception, match="op"):
        await names({"field": "age", "op": "like", "value": 1})


async def test_system_tables_read_and_the_secret_one_refused(portable: Runtime) -> None:
    empty = await system(portable, "query", "page", table="_scheduled_functions",
                         paginationOpts={"numItems": 5, "cursor": None})
    assert empty["page"] == [] and empty["isDone"]
    with pytest.raises(FunctionFailure, match="not readable"):
        await system(portable, "query", "page", table="_environment_variables",
                     paginationOpts={"numItems": 5, "cursor": None})


async def test_files_come_with_urls_and_delete(portable: Runtime) -> None:
    storage_id = (await portable.call("action", "data:store", {"text": "hello, file"})).value
    page = await system(portable, "query", "files", paginationOpts={"numItems": 10, "cursor": None})
    [file] = page["page"]
    assert file["_id"] == storage_id and file["size"] == len("hello, file")
    assert file["url"] == f"{portable.config.base_url}/api/storage/{storage_id}"
    upload = await system(portable, "mutation", "generateUploadUrl")
    assert upload.startswith(f"{portable.config.base_url}/api/storage/upload?token=")
    await system(portable, "mutation", "deleteFile", storageId=storage_id)
    assert (await system(portable, "query", "files", paginationOpts={"numItems": 10, "cursor": None}))["page"] == []


async def test_functions_describe_the_app_for_the_runner(portable: Runtime) -> None:
    functions = {f["path"]: f for f in await system(portable, "query", "functions")}
    assert not any(path.startswith("_system/") for path in functions)
    add = functions["data:add_author"]
    assert (add["kind"], add["visibility"]) == ("mutation", "public")
    assert set(add["args"]["properties"]) == {"name", "age"}
    assert functions["data:store"]["kind"] == "action"
    # the health endpoint's count and `ripple dev --codegen` (from the loaded app) leave them out
    assert portable.app.registry.app_function_count == len(functions)
    assert "_system" not in codegen.api_dts(portable.app) and "add_author" in codegen.api_dts(portable.app)


async def test_scheduled_functions_and_crons_with_cancel(namespace: str) -> None:
    async with open_runtime(SCHEDULER, namespace) as runtime:
        job = (await runtime.call("mutation", "jobs:schedule", {"fn": "jobs:noop", "delay": 3600})).value
        page = await system(runtime, "query", "scheduled", paginationOpts={"numItems": 10, "cursor": None})
        [listed] = [d for d in page["page"] if d["_id"] == job]
        assert listed["state"] == {"kind": "pending"} and listed["name"] == "jobs:noop"
        await system(runtime, "mutation", "cancel", id=job)
        page = await system(runtime, "query", "scheduled", paginationOpts={"numItems": 10, "cursor": None})
        assert [d["state"]["kind"] for d in page["page"] if d["_id"] == job] == ["canceled"]
        declared = Crons()
        declared.interval("hourly", hours=1, fn="jobs:noop")
        await Scheduler(runtime).sync_crons(declared)
        [cron] = await system(runtime, "query", "crons")
        assert cron["name"] == "hourly" and cron["function"] == "jobs:noop" and cron["args"] == {}
        assert cron["schedule"] == {"kind": "interval", "seconds": 3600} and cron["lastRun"] is None


# -- through a real server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(pg_url, tmp_path_factory, "serve", PORTABLE, env={"RIPPLE_ADMIN_KEY": KEY})


def test_only_the_admin_key_calls_them(server: ServerProcess) -> None:
    body = {"path": "_system/dashboard:tables", "args": {}}
    anonymous = httpx.post(f"{server.url}/api/query", json=body).json()
    assert anonymous["code"] == FunctionNotFound.code
    wrong = httpx.post(f"{server.url}/api/query", json=body, headers={"Authorization": "Convex nope"})
    assert wrong.status_code == 401
    admin = httpx.post(f"{server.url}/api/query", json=body, headers={"Authorization": f"Convex {KEY}"}).json()
    assert admin["status"] == "success" and admin["value"][0]["name"] == "authors"
    assert httpx.get(f"{server.url}/_ripple/health").json()["functions"] == len(
        httpx.post(f"{server.url}/api/query", json={"path": "_system/dashboard:functions", "args": {}},
                   headers={"Authorization": f"Convex {KEY}"}).json()["value"])


async def test_a_page_is_live_over_the_websocket(server: ServerProcess) -> None:
    name = "live-" + secrets.token_hex(4)
    args = {"table": "authors", "paginationOpts": {"numItems": 5, "cursor": None},
            "filters": [{"field": "name", "op": "eq", "value": name}]}
    async with RippleClient(server.url, admin_key=KEY) as client:
        updates = client.subscribe("_system/dashboard:page", args)
        assert (await asyncio.wait_for(anext(updates), 10))["page"] == []
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{server.url}/api/mutation", headers={"Authorization": f"Convex {KEY}"},
                                       json={"path": "_system/dashboard:insert",
                                             "args": {"table": "authors", "document": {"name": name, "age": 1}}})
        new_id = response.json()["value"]
        page = (await asyncio.wait_for(anext(updates), 10))["page"]
        assert [(d["_id"], d["name"]) for d in page] == [(new_id, name)]


def test_the_admin_sees_what_was_wrong_outside_dev_mode(server: ServerProcess) -> None:
    """`ripple serve` redacts internal errors, but a document the schema refuses is the admin's
    own mistake: the dashboard shows which field."""
    body = {"path": "_system/dashboard:insert", "args": {"table": "authors", "document": {"name": "B", "age": "old"}}}
    answer = httpx.post(f"{server.url}/api/mutation", json=body, headers={"Authorization": f"Convex {KEY}"}).json()
    assert answer["status"] == "error" and "`age`" in answer["errorMessage"] and "Request ID" not in answer["errorMessage"]


class Node(BaseModel):
    label: str
    children: list[Node] = []


class Tree(BaseModel):
    root: Node
    weight: Int64


def test_schemas_become_convex_values_nested_and_recursive_models_included() -> None:
    """pydantic's schemas hold `$defs`/`$ref` (field names Convex refuses) and an Int64's bounds:
    the definitions are inlined, a recursive one down to a depth, and every answer is a value."""
    schema = dashboard._json_schema(Tree.model_json_schema)
    to_convex_json(schema)
    root = schema["properties"]["root"]
    assert root["properties"]["label"] == {"title": "Label", "type": "string"}
    depth, node = 0, root
    while node:  # each level inlines Node again, until the limit leaves `{}`
        node = node["properties"]["children"]["items"]
        depth += 1
    assert depth == dashboard.MAX_SCHEMA_DEPTH
    app = load_app(ROOT)  # the example app: nested models, enums, Int64
    to_convex_json([dashboard.describe_tables(app), dashboard.describe_functions(app)])
