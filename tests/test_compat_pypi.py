"""Convex compatibility (issue 10), as the official PyPI `convex` package sees Ripple: its
`ConvexHttpClient` (HTTP, `convex_encoded_json`) and its websocket `ConvexClient` (Rust), against
`ripple dev` serving tests/apps/compat. The expected values are Convex's documented behaviour.

The websocket client's blocking calls run on a worker thread; its subscription iterator holds the
GIL while it waits, so subscriptions get a process of their own."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from convex import ConvexClient, ConvexError, ConvexExecutionError, ConvexInt64
from convex.http_client import ConvexHttpClient

from conftest import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def http(compat_server: ServerProcess) -> ConvexHttpClient:
    return ConvexHttpClient(compat_server.url)


@pytest.fixture(scope="module")
def ws(compat_server: ServerProcess) -> ConvexClient:
    return ConvexClient(compat_server.url)


async def both(call: str, path: str, args: dict[str, Any], http: ConvexHttpClient, ws: ConvexClient) -> list[Any]:
    """The same call through both clients."""
    return [await asyncio.to_thread(getattr(client, call), path, args) for client in (http, ws)]


# -- 1. numbers ----------------------------------------------------------------------------------


async def test_integer_results_are_float64_for_both_clients(http: ConvexHttpClient, ws: ConvexClient) -> None:
    # Convex writes float64 as JSON floats; ConvexHttpClient refused `3` ("Bad JSON value: 3").
    for value in await both("query", "compat:count", {"xs": [1, 2, 3]}, http, ws):
        assert value == 3 and type(value) is float
    for numbers in await both("query", "compat:numbers", {}, http, ws):
        assert numbers["int"] == 3.0 and numbers["float"] == 2.5 and numbers["negative"] == -7.0
        assert numbers["safe"] == float(2**53) and type(numbers["zero"]) is float
        assert isinstance(numbers["int64"], ConvexInt64) and numbers["int64"].value == 2**60


async def test_numbers_sent_by_python_clients(http: ConvexHttpClient, ws: ConvexClient) -> None:
    # The PyPI clients send a Python int as a float64 (1.0); an int64 only as ConvexInt64.
    for kinds in await both("query", "compat:kinds", {"value": {"i": 1, "f": 1.5, "big": ConvexInt64(7)}}, http, ws):
        assert kinds == {"big": "Int64", "f": "float", "i": "float"}


async def test_the_raw_wire_carries_floats(compat_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=compat_server.url) as client:
        for fmt in ("json", "convex_encoded_json"):
            r = await client.post("/api/query", json={"path": "compat:count", "args": {"xs": [1, 2]}, "format": fmt})
            assert b'"value":2.0' in r.content, r.content
        r = await client.post("/api/query", json={"path": "compat:numbers", "args": {}, "format": "json"})
        assert r.json()["value"]["int64"] == str(2**60)  # Convex's `json` export writes int64 as a string


# -- 2. ConvexError from a mutation -----------------------------------------------------------------


async def test_convex_error_reaches_both_clients_with_its_data(http: ConvexHttpClient, ws: ConvexClient) -> None:
    for client in (http, ws):
        with pytest.raises(ConvexError) as caught:
            await asyncio.wait_for(asyncio.to_thread(client.mutation, "compat:refuse", {"code": "NOPE"}), 20)
        assert caught.value.data == {"code": "NOPE", "retry": 2.0}


# -- 5. field order ------------------------------------------------------------------------------------


async def test_documents_and_objects_come_back_sorted(http: ConvexHttpClient, ws: ConvexClient) -> None:
    for doc in await both("mutation", "compat:insert_unordered", {}, http, ws):
        assert list(doc) == ["Alpha", "_creationTime", "_id", "mid", "zeta"]
        assert list(doc["mid"]) == ["a", "bb", "ccc"]
    for built in await both("query", "compat:built", {}, http, ws):
        assert list(built) == ["Beta", "alpha", "zeta"] and list(built["alpha"]) == ["x", "y"]
    for names in await both("query", "compat:field_names", {"value": {"b": 1, "a": 2, "C": 3}}, http, ws):
        assert names == ["C", "a", "b"]  # arguments too, as a Convex function sees them


# -- 9. scheduler units ---------------------------------------------------------------------------------


async def test_a_millisecond_timestamp_as_run_at_is_refused(http: ConvexHttpClient, ws: ConvexClient) -> None:
    import time

    for client in (http, ws):
        with pytest.raises((ConvexExecutionError, Exception)) as caught:
            await asyncio.to_thread(client.mutation, "compat:schedule_at", {"when": time.time() * 1000})
        assert "milliseconds" in str(caught.value), caught.value


# -- 4. optional means absent --------------------------------------------------------------------------


async def test_optional_fields_are_absent_and_patch_removes_them(http: ConvexHttpClient, ws: ConvexClient) -> None:
    for tag, client in (("h", http), ("w", ws)):
        prefix = f"p4{tag}-"

        def call(kind: str, path: str, args: dict[str, Any], client: Any = client) -> Any:
            return asyncio.to_thread(getattr(client, kind), path, args)

        assert "note" not in await call("mutation", "compat:add_note", {"title": prefix + "a"})
        assert (await call("mutation", "compat:add_null_note", {"title": prefix + "b"}))["note"] is None
        noted = await call("mutation", "compat:add_note", {"title": prefix + "c", "note": "x"})
        assert "note" not in await call("mutation", "compat:clear_note", {"id": noted["_id"]})
        by_note = await call("query", "compat:notes_by_note", {"prefix": prefix})
        # undefined (absent) sorts before null: eq(UNSET) and eq(None) are different ranges.
        assert by_note == {"absent": [prefix + "a", prefix + "c"], "null": [prefix + "b"],
                           "all": [prefix + "a", prefix + "c", prefix + "b"]}


# -- 7. nested calls -------------------------------------------------------------------------------------


async def test_a_caught_nested_mutation_rolls_back_alone(http: ConvexHttpClient, ws: ConvexClient) -> None:
    for tag, client in (("h", http), ("w", ws)):
        prefix = f"p7{tag}"
        out = await asyncio.to_thread(client.mutation, "compat:outer", {"prefix": prefix})
        assert out == {"caught": {"nested": prefix + "-inner"}, "seen": [prefix + "-outer"]}
        assert await asyncio.to_thread(client.query, "compat:names", {"prefix": prefix}) == [prefix + "-outer"]


# -- 8. limits -------------------------------------------------------------------------------------------


async def test_a_document_over_one_mib_is_refused(http: ConvexHttpClient, ws: ConvexClient) -> None:
    for client in (http, ws):
        with pytest.raises(Exception, match=r"at most 1.00 MiB \(1048576 bytes\)") as caught:
            await asyncio.to_thread(client.mutation, "compat:store_text", {"n": 2_000_000})
        assert not isinstance(caught.value, ConvexError)
        assert isinstance(await asyncio.to_thread(client.mutation, "compat:store_text", {"n": 1000}), str)


# -- 10. log levels ----------------------------------------------------------------------------------------


async def test_log_lines_carry_convex_levels(http: ConvexHttpClient, ws: ConvexClient, capfd: pytest.CaptureFixture[str]) -> None:
    http.set_debug(True)  # ConvexHttpClient prints a result's log lines only when asked
    try:
        await asyncio.to_thread(http.query, "compat:chatty", {})
    finally:
        http.set_debug(False)
    await asyncio.to_thread(ws.query, "compat:chatty", {})
    out = capfd.readouterr()
    text = out.out + out.err
    for line in ("[LOG] printed {'k': 1} 2.5", "[INFO] info line", "[WARN] careful", "[ERROR] broken"):
        assert text.count(line) == 2, (line, text)  # once per client


# -- 11. split pages ---------------------------------------------------------------------------------------


async def test_pages_split_at_maximum_rows_read(http: ConvexHttpClient, ws: ConvexClient) -> None:
    await asyncio.to_thread(http.mutation, "compat:fill", {"prefix": "p11", "n": 12})
    for client in (http, ws):
        opts = {"numItems": 10, "cursor": None, "maximumRowsRead": 3}
        page = await asyncio.to_thread(client.query, "compat:page", {"paginationOpts": opts})
        assert len(page["page"]) == 3 and page["isDone"] is False
        assert page["pageStatus"] == "SplitRequired" and isinstance(page["splitCursor"], str)
        rest = await asyncio.to_thread(client.query, "compat:page", {"paginationOpts": {**opts, "cursor": page["continueCursor"]}})
        assert rest["page"][0]["_id"] != page["page"][-1]["_id"]


# -- 3. strict validation ---------------------------------------------------------------------------------


async def test_arguments_are_validated_without_coercion(http: ConvexHttpClient, ws: ConvexClient) -> None:
    good = {"n": 2, "f": 2, "flag": True, "tags": [1, 2]}  # the clients send every int as 2.0
    for typed in await both("query", "compat:typed", good, http, ws):
        assert typed == {"n": "int", "f": "float", "flag": True, "tags": [1.0, 2.0]}
    for bad, field in (({"n": "5"}, "`n`"), ({"tags": ["1"]}, "`tags[0]`"), ({"flag": 1}, "`flag`"),
                       ({"n": 2.5}, "`n`")):
        for client in (http, ws):
            with pytest.raises(Exception, match=re.escape(field)) as caught:
                await asyncio.to_thread(client.query, "compat:typed", {**good, **bad})
            assert "invalid arguments for compat:typed" in str(caught.value)


# -- 6. typed ids -------------------------------------------------------------------------------------------


async def test_typed_ids_refuse_another_tables_id(http: ConvexHttpClient, ws: ConvexClient) -> None:
    note = await asyncio.to_thread(http.mutation, "compat:add_note", {"title": "p6"})
    other = await asyncio.to_thread(http.mutation, "compat:loose_id", {})
    for client in (http, ws):
        assert await asyncio.to_thread(client.query, "compat:note_title", {"id": note["_id"]}) == "p6"
        with pytest.raises(Exception, match=r"`id`: Found an id of table loose, which does not match table notes"):
            await asyncio.to_thread(client.query, "compat:note_title", {"id": other})
