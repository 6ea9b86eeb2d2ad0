"""Convex compatibility (issue 10) as Ripple's own Python SDK (`client_sdk`) sees it, against
`ripple dev` serving tests/apps/compat: it decodes values as the PyPI `convex` client does, so
code moving between the two sees the same values."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator

import pytest

from client_sdk import ConvexError, RippleClient
from client_sdk.client import RippleClientError
from server import Int64

from conftest import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
async def client(compat_server: ServerProcess) -> AsyncIterator[RippleClient]:
    async with RippleClient(compat_server.url) as c:
        yield c


# -- 1. numbers ----------------------------------------------------------------------------------


async def test_numbers(client: RippleClient) -> None:
    assert (count := await client.query("compat:count", {"xs": [1, 2, 3]})) == 3 and type(count) is float
    numbers = await client.query("compat:numbers", {})
    assert numbers == {"float": 2.5, "int": 3.0, "int64": 2**60, "negative": -7.0, "safe": float(2**53), "zero": 0.0}
    assert type(numbers["int64"]) is Int64 and type(numbers["int"]) is float
    # What the SDK sends arrives as it was: an int as an int (a float64), an Int64 as an int64.
    assert await client.query("compat:kinds", {"value": {"i": 1, "f": 1.5, "big": Int64(7)}}) == {
        "big": "Int64", "f": "float", "i": "int"}


# -- 2. ConvexError --------------------------------------------------------------------------------


async def test_convex_error_data(client: RippleClient) -> None:
    with pytest.raises(ConvexError) as caught:
        await client.mutation("compat:refuse", {"code": "NOPE"})
    assert caught.value.data == {"code": "NOPE", "retry": 2.0}


# -- 5. field order ------------------------------------------------------------------------------------


async def test_field_order(client: RippleClient) -> None:
    doc = await client.mutation("compat:insert_unordered", {})
    assert list(doc) == ["Alpha", "_creationTime", "_id", "mid", "zeta"] and list(doc["mid"]) == ["a", "bb", "ccc"]
    assert list(await client.query("compat:built", {})) == ["Beta", "alpha", "zeta"]
    assert await client.query("compat:field_names", {"value": {"b": 1, "a": 2, "C": 3}}) == ["C", "a", "b"]


# -- 9. scheduler units ---------------------------------------------------------------------------------


async def test_run_at_in_milliseconds_is_refused(client: RippleClient) -> None:
    with pytest.raises(RippleClientError, match="milliseconds"):
        await client.mutation("compat:schedule_at", {"when": time.time() * 1000})


# -- 3. strict validation -----------------------------------------------------------------------------


async def test_arguments_are_validated_without_coercion(client: RippleClient) -> None:
    good = {"n": 2.0, "f": 2, "flag": True, "tags": [1, 2]}
    assert await client.query("compat:typed", good) == {"n": "int", "f": "float", "flag": True, "tags": [1, 2]}
    for bad, field in (({"n": "5"}, "`n`"), ({"tags": ["1"]}, "`tags[0]`"), ({"flag": 1}, "`flag`"), ({"n": 2.5}, "`n`")):
        with pytest.raises(RippleClientError, match=re.escape(field)):
            await client.query("compat:typed", {**good, **bad})


# -- 4. optional means absent --------------------------------------------------------------------------


async def test_optional_fields_are_absent(client: RippleClient) -> None:
    prefix = "s4-"
    assert "note" not in await client.mutation("compat:add_note", {"title": prefix + "a"})
    assert (await client.mutation("compat:add_null_note", {"title": prefix + "b"}))["note"] is None
    noted = await client.mutation("compat:add_note", {"title": prefix + "c", "note": "x"})
    assert "note" not in await client.mutation("compat:clear_note", {"id": noted["_id"]})
    assert await client.query("compat:notes_by_note", {"prefix": prefix}) == {
        "absent": [prefix + "a", prefix + "c"], "null": [prefix + "b"], "all": [prefix + "a", prefix + "c", prefix + "b"]}


# -- 6. typed ids -----------------------------------------------------------------------------------------


async def test_typed_ids(client: RippleClient) -> None:
    note = await client.mutation("compat:add_note", {"title": "s6"})
    assert await client.query("compat:note_title", {"id": note["_id"]}) == "s6"
    other = await client.mutation("compat:loose_id", {})
    with pytest.raises(RippleClientError, match="`id`: Found an id of table loose, which does not match table notes"):
        await client.query("compat:note_title", {"id": other})


# -- 7. nested calls ----------------------------------------------------------------------------------------


async def test_a_caught_nested_mutation_rolls_back_alone(client: RippleClient) -> None:
    assert await client.mutation("compat:outer", {"prefix": "s7"}) == {"caught": {"nested": "s7-inner"}, "seen": ["s7-outer"]}
    assert await client.query("compat:names", {"prefix": "s7"}) == ["s7-outer"]


# -- 8. limits ------------------------------------------------------------------------------------------------


async def test_a_document_over_one_mib_is_refused(client: RippleClient) -> None:
    with pytest.raises(RippleClientError, match=re.escape("at most 1.00 MiB (1048576 bytes)")):
        await client.mutation("compat:store_text", {"n": 2_000_000})
    assert isinstance(await client.mutation("compat:store_text", {"n": 1000}), str)


# -- 10. log levels ---------------------------------------------------------------------------------------------


async def test_log_lines_reach_the_sdk_logger_with_their_levels(client: RippleClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="client_sdk"):
        await client.query("compat:chatty", {})
    seen = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "client_sdk" and "compat:chatty" in r.getMessage()]
    assert seen == [
        (logging.INFO, "[CONVEX Q(compat:chatty)] [LOG] printed {'k': 1} 2.5"),
        (logging.INFO, "[CONVEX Q(compat:chatty)] [INFO] info line"),
        (logging.WARNING, "[CONVEX Q(compat:chatty)] [WARN] careful"),
        (logging.ERROR, "[CONVEX Q(compat:chatty)] [ERROR] broken"),
    ]


# -- 11. split pages ---------------------------------------------------------------------------------------------


async def test_pages_split_at_maximum_rows_read(client: RippleClient) -> None:
    await client.mutation("compat:fill", {"prefix": "s11", "n": 12})
    page = await client.query("compat:page", {"paginationOpts": {"numItems": 10, "cursor": None, "maximumRowsRead": 3}})
    assert len(page["page"]) == 3 and page["isDone"] is False
    assert page["pageStatus"] == "SplitRequired" and isinstance(page["splitCursor"], str)


# -- 12. a mutation's response before its writes ---------------------------------------------------------------


async def test_each_mutation_resolves_with_its_write_visible_and_values_never_go_back(
        client: RippleClient, compat_server: ServerProcess) -> None:
    name = "s12"
    seen: list[float] = []

    async def watch() -> None:
        async for value in client.subscribe("compat:value", {"name": name}):
            seen.append(value)

    watching = asyncio.create_task(watch())
    async with RippleClient(compat_server.url) as other:
        try:
            for _ in range(100):
                mine, _ = await asyncio.gather(client.mutation("compat:bump", {"name": name}),
                                                    other.mutation("compat:bump", {"name": name}))
                # Resolved: the subscription's current result already holds its write.
                assert await client.query("compat:value", {"name": name}) >= mine
        finally:
            watching.cancel()
    assert seen == sorted(seen) and await client.query("compat:value", {"name": name}) == 200
