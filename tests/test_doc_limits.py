"""Convex's limits on documents and transactions (docs/limits.md): each refused with an error
naming the limit, the figure and the table/field, before PostgreSQL sees the write; the mutation
rolls back and the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from server.core import limits
from server.core.runtime import Runtime
from server.core.transaction import MAX_DOCS_WRITTEN, Transaction
from server.core.values import to_convex_json
from server.errors import FunctionFailure, LimitExceeded

from conftest import ServerProcess, call

StartServer = Callable[..., ServerProcess]


async def m(rt: Runtime, path: str, **args: Any) -> Any:
    return (await rt.call("mutation", path, args)).value


async def refused(rt: Runtime, path: str, code: str = "LimitExceeded", **args: Any) -> str:
    with pytest.raises(FunctionFailure) as failure:
        await m(rt, path, **args)
    assert code in failure.value.message, failure.value.message
    return failure.value.message


def test_size_is_convex_size() -> None:
    """Convex's `Size` (crates/value/src/size.rs and lib.rs): null/bool 1, numbers 9, strings and
    bytes 2 + UTF-8 length, arrays 2 + elements, objects 2 + (name + 1 + value) per field; the
    document counts `_id` and `_creationTime`."""
    doc_id = "a" * 32
    system = 2 + (3 + 1 + 34) + (13 + 1 + 9)
    assert limits.check_document("t", doc_id, {}) == system
    value = {"n": None, "b": True, "f": 1.5, "i": 3, "s": "h\u00e9", "a": [1, "x"], "o": {"k": False}}
    fields = (1 + 1 + 1) + (1 + 1 + 1) + (1 + 1 + 9) + (1 + 1 + 9) + (1 + 1 + 5) + (1 + 1 + 2 + 9 + 3) + (1 + 1 + 2 + 1 + 1 + 1)
    assert limits.check_document("t", doc_id, to_convex_json(value)) == system + fields
    from server.core.values import Int64
    special = to_convex_json({"i": Int64(5), "f": float("nan"), "by": b"abcd"})
    assert limits.check_document("t", doc_id, special) == system + (1 + 1 + 9) * 2 + (2 + 1 + 6)


async def test_document_limits_refused_and_the_limit_itself_accepted(runtime: Runtime) -> None:
    top = 2 + (3 + 1 + 34) + (13 + 1 + 9) + (1 + 1 + 2)  # the document around {"s": "..."}
    await m(runtime, "doclimits:store", kind="string", n=limits.MAX_DOCUMENT_BYTES - top)
    message = await refused(runtime, "doclimits:store", kind="string", n=limits.MAX_DOCUMENT_BYTES - top + 1)
    assert "table `items`" in message and "1048577 bytes" in message and "at most 1.00 MiB (1048576 bytes)" in message
    message = await refused(runtime, "doclimits:store", kind="string", n=12_000_000)
    assert "11.44 MiB" in message

    await m(runtime, "doclimits:store", kind="fields", n=1022)  # with _id and _creationTime: 1024
    message = await refused(runtime, "doclimits:store", kind="fields", n=1023)
    assert "object has 1025 fields (1023 and the 2 system fields); at most 1024 are allowed" in message
    await m(runtime, "doclimits:store", kind="inner_fields", n=1024)
    message = await refused(runtime, "doclimits:store", kind="inner_fields", n=2000)
    assert "field `o`: object has 2000 fields; at most 1024 are allowed" in message

    await m(runtime, "doclimits:store", kind="depth", n=16)
    message = await refused(runtime, "doclimits:store", kind="depth", n=17)
    assert "field `deep" in message and "nested more than 16 levels deep" in message
    await refused(runtime, "doclimits:store", kind="depth", n=20)

    await m(runtime, "doclimits:store", kind="array", n=8192)
    message = await refused(runtime, "doclimits:store", kind="array", n=8193)
    assert "field `xs`: array has 8193 elements; at most 8192 are allowed" in message


async def test_field_names(runtime: Runtime) -> None:
    await m(runtime, "doclimits:store_named", name="with space-and.dots!", nested=True)
    await m(runtime, "doclimits:store_named", name="", nested=True)  # Convex allows an empty name
    message = await refused(runtime, "doclimits:store_named", name="caf\u00e9", nested=True)
    assert "field `o.café`: field name 'café' has the character 'é'" in message
    message = await refused(runtime, "doclimits:store_named", name="tab\there", nested=True)
    assert "non-control ASCII" in message
    await refused(runtime, "doclimits:store_named", name="caf\u00e9")  # at the top level too
    await m(runtime, "doclimits:store_named", name="k" * 1024, nested=True)
    # values.py's encoder refuses this one first, as it does in arguments
    message = await refused(runtime, "doclimits:store_named", "DocumentValidationError", name="k" * 1025, nested=True)
    assert "field `o`" not in message and "o: field name longer than 1024 characters" in message


async def test_unpaired_surrogate(runtime: Runtime) -> None:
    message = await refused(runtime, "doclimits:store_doc", doc={"ok": "fine", "bad": ["x", "\ud800"]})
    assert "field `bad[1]`: strings must be valid Unicode" in message


async def test_patch_is_checked_and_a_failed_mutation_rolls_back(runtime: Runtime) -> None:
    doc_id = await m(runtime, "doclimits:store", kind="string", n=10)
    message = await refused(runtime, "doclimits:patch_string", id=doc_id, n=2 << 20)
    assert f"document {doc_id}" in message
    assert (await runtime.call("query", "doclimits:get", {"id": doc_id})).value["s"] == "x" * 10
    await refused(runtime, "doclimits:small_then_big", tag="rolled-back")
    assert (await runtime.call("query", "doclimits:count_small", {"tag": "rolled-back"})).value == 0


async def test_bytes_written_per_mutation(runtime: Runtime) -> None:
    size = 1_000_000
    assert await m(runtime, "doclimits:write_bytes", docs=16, size=size) == 16  # 16.0 MB < 16 MiB
    message = await refused(runtime, "doclimits:write_bytes", docs=17, size=size)
    assert "too many bytes written in one mutation" in message and "over the limit of 16777216 (16 MiB)" in message
    # Catching the refusal does not reset the count: every later write is refused too.
    assert await m(runtime, "doclimits:write_bytes", docs=20, size=size, catch=True) == 16


async def test_bytes_read_per_function(runtime: Runtime) -> None:
    for _ in range(2):
        await m(runtime, "doclimits:write_bytes", docs=9, size=1_000_000)
    message = await refused_query(runtime, "doclimits:read_all")
    assert "too many bytes read in one function" in message and "over the limit of 16777216" in message


async def refused_query(rt: Runtime, path: str, **args: Any) -> str:
    with pytest.raises(FunctionFailure) as failure:
        await rt.call("query", path, args)
    assert "LimitExceeded" in failure.value.message
    return failure.value.message


def test_writes_per_transaction() -> None:
    """Each write counts, as in Convex (a document written twice counts twice). Counted on the
    Transaction itself: 16,000 statements end to end take minutes on a small test machine."""
    tx = Transaction(conn=None, catalog=None, writable=True)  # type: ignore[arg-type]
    for _ in range(MAX_DOCS_WRITTEN):
        tx.count_write(10)
    with pytest.raises(LimitExceeded, match="too many writes in one mutation: 16001, over the limit of 16000"):
        tx.count_write(10)
    with pytest.raises(LimitExceeded):  # and every later one
        tx.count_write(0)


async def test_refusals_reach_http_clients_and_the_server_keeps_serving(start_server: StartServer) -> None:
    server = start_server("dev")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        big = "x" * 2_000_000
        response = await call(client, "mutation", "doclimits:store_doc", {"doc": {"s": big}})
        body = response.json()
        assert body["status"] == "error", body
        assert "table `items`" in body["errorMessage"] and "at most 1.00 MiB" in body["errorMessage"]
        response = await call(client, "mutation", "counters:inc", {"name": "after"})
        assert response.json()["value"] == 1
