"""Convex compatibility (issue 10), as the official PyPI `convex` package sees Ripple: its
`ConvexHttpClient` (HTTP, `convex_encoded_json`) and its websocket `ConvexClient` (Rust), against
`ripple dev` serving tests/apps/compat. The expected values are Convex's documented behaviour.

The websocket client's blocking calls run on a worker thread; its subscription iterator holds the
GIL while it waits, so subscriptions get a process of their own."""

from __future__ import annotations

import asyncio
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
