"""Pages split as Convex splits them: `maximumRowsRead` / `maximumBytesRead` stop a page early
("SplitRequired"), a page near a limit is "SplitRecommended", and `splitCursor` cuts what a page
read in two; through the runtime, over HTTP, and driven by the npm paginated client."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.core.limits import value_size
from server.core.runtime import Runtime
from server.errors import FunctionFailure

from conftest import ServerProcess, run_node_tests

StartServer = Callable[..., ServerProcess]
ROOT = Path(__file__).resolve().parent.parent


async def page(rt: Runtime, opts: dict[str, Any], every: int = 1, path: str = "pages:rare") -> Any:
    return (await rt.call("query", path, {"paginationOpts": {"cursor": None, **opts}, "every": every})).value


async def insert(rt: Runtime, docs: list[dict[str, Any]]) -> None:
    await rt.call("mutation", "items:insert_many", {"docs": docs})


def ns(result: Any) -> list[int]:
    return [d["n"] for d in result["page"]]


async def test_maximum_rows_read_stops_a_page_that_reads_too_much(runtime: Runtime) -> None:
    """Rare documents: 8 rows read give 3 of the 5 wanted; Convex stops there rather than
    reading on, and says so (SplitRequired, not done, continuing after the last row read)."""
    await insert(runtime, [{"n": i} for i in range(30)])
    first = await page(runtime, {"numItems": 5, "maximumRowsRead": 8}, every=3)
    assert ns(first) == [0, 3, 6]
    assert first["pageStatus"] == "SplitRequired" and first["isDone"] is False
    nxt = await page(runtime, {"numItems": 5, "maximumRowsRead": 8, "cursor": first["continueCursor"]}, every=3)
    assert ns(nxt) == [9, 12, 15] and nxt["pageStatus"] == "SplitRequired"  # rows 8..15
    # The split cursor falls after the 5th of the 8 rows read (n == 4): the two halves tile the page.
    left = await page(runtime, {"numItems": 5, "endCursor": first["splitCursor"]}, every=3)
    right = await page(runtime, {"numItems": 5, "cursor": first["splitCursor"], "endCursor": first["continueCursor"]},
                       every=3)
    assert ns(left) == [0, 3] and ns(right) == [6]
    assert left["continueCursor"] == first["splitCursor"] and right["continueCursor"] == first["continueCursor"]
    # With an endCursor the page is a fixed range, read whole whatever the limits say (having read
    # more than three quarters of them, it is SplitRecommended, as in Convex).
    whole = await page(runtime, {"numItems": 1, "maximumRowsRead": 2, "endCursor": first["continueCursor"]}, every=3)
    assert ns(whole) == [0, 3, 6] and whole["pageStatus"] == "SplitRecommended"
    assert (await page(runtime, {"numItems": 1, "endCursor": first["continueCursor"]}, every=3))["pageStatus"] is None
    # Walking with the limit visits every document once and ends done.
    seen, cursor = [], None
    while True:
        res = await page(runtime, {"numItems": 5, "maximumRowsRead": 8, "cursor": cursor}, every=3)
        seen += ns(res)
        cursor = res["continueCursor"]
        if res["isDone"]:
            break
    assert seen == list(range(0, 30, 3))


async def test_maximum_bytes_read_includes_the_document_that_crosses_it(runtime: Runtime) -> None:
    await insert(runtime, [{"n": i, "pad": "x" * 1000} for i in range(10)])
    all_docs = (await page(runtime, {"numItems": 10}))["page"]
    sizes = [value_size(d) for d in all_docs]
    assert 1000 < sizes[0] < 1100
    limit = sizes[0] + sizes[1] + 1  # two documents stay under it; the third crosses it
    res = await page(runtime, {"numItems": 10, "maximumBytesRead": limit})
    assert ns(res) == [0, 1, 2] and res["pageStatus"] == "SplitRequired" and not res["isDone"]
    one = await page(runtime, {"numItems": 10, "maximumBytesRead": 1})  # always at least one document
    assert ns(one) == [0] and one["pageStatus"] == "SplitRequired"
    rest = await page(runtime, {"numItems": 10, "maximumBytesRead": 1, "cursor": one["continueCursor"]})
    assert ns(rest) == [1]


async def test_split_recommended_and_the_split_cursor(runtime: Runtime) -> None:
    await insert(runtime, [{"n": i} for i in range(20)])
    plain = await page(runtime, {"numItems": 5})
    assert plain["pageStatus"] is None and plain["splitCursor"] is not None
    left = await page(runtime, {"numItems": 5, "endCursor": plain["splitCursor"]})
    assert ns(left) == [0, 1, 2]  # the split falls after document 5 // 2 of the 5 read
    two = await page(runtime, {"numItems": 2})
    assert two["splitCursor"] is None  # too little to split
    # In descending order likewise: the cursor is after the middle document in the query's order.
    desc = {"order": "desc", "paginationOpts": {"numItems": 5, "cursor": None, "maximumRowsRead": 3}}
    high = (await runtime.call("query", "items:page", desc)).value
    assert ns(high) == [19, 18, 17] and high["pageStatus"] == "SplitRequired"
    desc["paginationOpts"] = {"numItems": 5, "cursor": None, "endCursor": high["splitCursor"]}
    assert ns((await runtime.call("query", "items:page", desc)).value) == [19, 18]
    # More than three quarters of maximumRowsRead read, the page full before it: SplitRecommended.
    near = await page(runtime, {"numItems": 8, "maximumRowsRead": 10})
    assert ns(near) == list(range(8)) and near["pageStatus"] == "SplitRecommended" and not near["isDone"]
    under = await page(runtime, {"numItems": 7, "maximumRowsRead": 10})
    assert under["pageStatus"] is None
    # Over three quarters of maximumBytesRead likewise.
    size = value_size((await page(runtime, {"numItems": 1}))["page"][0])
    heavy = await page(runtime, {"numItems": 4, "maximumBytesRead": size * 5})
    assert ns(heavy) == [0, 1, 2, 3] and heavy["pageStatus"] == "SplitRecommended"
    # The last page, done within the limits.
    end = await page(runtime, {"numItems": 10, "maximumRowsRead": 100, "cursor": plain["continueCursor"]})
    assert ns(end) == list(range(5, 15)) and end["pageStatus"] is None and not end["isDone"]
    last = await page(runtime, {"numItems": 10, "maximumRowsRead": 100, "cursor": end["continueCursor"]})
    assert ns(last) == list(range(15, 20)) and last["isDone"] and last["pageStatus"] is None


@pytest.mark.parametrize("bad", [0, -1, "5", True, 1.5])
@pytest.mark.parametrize("name", ["maximumRowsRead", "maximumBytesRead"])
async def test_read_limits_must_be_positive_integers(runtime: Runtime, name: str, bad: Any) -> None:
    with pytest.raises(FunctionFailure) as err:
        await page(runtime, {"numItems": 5, name: bad})
    assert f"paginationOpts.{name} must be a positive integer, not {bad!r}" in err.value.message
    assert (await page(runtime, {"numItems": 5, name: None}))["pageStatus"] is None  # null: no limit


@pytest.mark.e2e
async def test_split_pages_over_http(start_server: StartServer) -> None:
    server = start_server("dev")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async def query(opts: dict[str, Any]) -> httpx.Response:
            return await client.post("/api/query", json={"path": "pages:rare", "format": "json", "args": {
                "paginationOpts": {"cursor": None, **opts}, "every": 4}})

        r = await client.post("/api/mutation", json={"path": "items:insert_many",
                                                      "args": {"docs": [{"n": i} for i in range(12)]}})
        assert r.status_code == 200, r.text
        body = (await query({"numItems": 3, "maximumRowsRead": 6})).json()
        value = body["value"]
        assert [d["n"] for d in value["page"]] == [0, 4] and value["pageStatus"] == "SplitRequired"
        assert isinstance(value["splitCursor"], str) and value["isDone"] is False
        body = (await query({"numItems": 3, "maximumRowsRead": 0})).json()
        assert body["status"] == "error"
        assert "paginationOpts.maximumRowsRead must be a positive integer, not 0" in body["errorMessage"]
        assert (await client.get("/_ripple/health")).status_code == 200


@pytest.mark.e2e
@pytest.mark.node
def test_the_npm_paginated_client_splits_pages(start_server: StartServer) -> None:
    """tests/js/page_split.test.mjs: ConvexClient.onPaginatedUpdate_experimental subscribes to the
    two halves of every SplitRequired page and shows each document once."""
    server = start_server("serve")
    run_node_tests("page_split.test.mjs", server, timeout=120)
