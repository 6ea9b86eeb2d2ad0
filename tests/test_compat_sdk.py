"""Convex compatibility (issue 10) as Ripple's own Python SDK (`client_sdk`) sees it, against
`ripple dev` serving tests/apps/compat: it decodes values as the PyPI `convex` client does, so
code moving between the two sees the same values."""

from __future__ import annotations

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
