"""ctx.run_query / ctx.run_mutation inside queries and mutations, in the caller's transaction (as
Convex's runQuery / runMutation in queries and mutations): a nested mutation is a sub-transaction
(a PostgreSQL savepoint), nested reads are the caller's reads, calls nest at most 8 deep, and a
query or mutation cannot run an action. App: tests/apps/basic/functions/calls.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from client_sdk import RippleClient
from server.core.runtime import Runtime
from server.core.transaction import Transaction
from server.errors import FunctionFailure

from conftest import BASIC_APP, ServerProcess, call, open_runtime


async def value(runtime: Runtime, kind: str, path: str, args: dict[str, Any] | None = None) -> Any:
    return (await runtime.call(kind, path, args or {}, allow_internal=True)).value  # type: ignore[arg-type]


async def last_logged_writes(runtime: Runtime) -> list[dict[str, Any]]:
    """The write set of the latest commit, as the change log (and so live queries) got it."""
    async with runtime.db.acquire() as conn:
        writes = await conn.fetchval("SELECT writes FROM _ripple_commits ORDER BY ts DESC LIMIT 1")
    return list(orjson.loads(writes) if isinstance(writes, (str, bytes)) else writes)


async def test_a_nested_mutation_commits_with_its_caller(runtime: Runtime) -> None:
    out = await runtime.call("mutation", "calls:outer", {"name": "a"})
    # The nested query saw the caller's uncommitted writes, the nested mutation's included.
    assert out.value == {"inner": 1, "seen": ["before", "after"], "counter": 1}
    assert out.log_lines == ["[LOG] outer before", "[LOG] add a"]
    assert await value(runtime, "query", "counters:get", {"name": "a"}) == 1
    assert await value(runtime, "query", "calls:items_of", {"a": "a"}) == ["before", "after"]
    assert await value(runtime, "query", "calls:jobs_of") == ["a"]
    assert await value(runtime, "query", "calls:scheduled") == 1


async def test_a_caught_nested_failure_rolls_back_only_its_writes_and_jobs(runtime: Runtime) -> None:
    out = await runtime.call("mutation", "calls:outer", {"name": "b", "fail_inner": True})
    assert out.value == {"inner": {"failed": "b"}, "seen": ["before", "after"], "counter": 0}
    assert out.log_lines == ["[LOG] outer before", "[LOG] add b"]  # the failed call's lines too
    assert await value(runtime, "query", "calls:items_of", {"a": "b"}) == ["before", "after"]
    assert await value(runtime, "query", "counters:get", {"name": "b"}) == 0
    assert await value(runtime, "query", "calls:jobs_of") == []
    assert await value(runtime, "query", "calls:scheduled") == 0
    # The logged write set holds the caller's two items and nothing of the rolled-back call.
    writes = await last_logged_writes(runtime)
    assert sorted(w["table"] for w in writes) == ["items", "items"]


async def test_an_uncaught_nested_failure_rolls_back_everything(runtime: Runtime) -> None:
    with pytest.raises(FunctionFailure) as failed:
        await runtime.call("mutation", "calls:outer", {"name": "c", "fail_inner": True, "catch": False})
    assert failed.value.data == {"failed": "c"}
    assert await value(runtime, "query", "calls:items_of", {"a": "c"}) == []
    assert await value(runtime, "query", "counters:get", {"name": "c"}) == 0
    assert await value(runtime, "query", "calls:scheduled") == 0


async def test_a_caller_failing_after_a_nested_success_rolls_both_back_under_an_outer_savepoint(runtime: Runtime) -> None:
    """As a scheduled mutation runs: under a savepoint of its own (scheduler/runs.py), so the
    nested call's savepoint is a second one; the caller's rollback must undo both."""
    fn = runtime.app.registry.resolve("calls:add_then_fail", allow_internal=True)
    async with runtime.db.acquire() as conn, runtime.transaction(conn, "serializable") as tx:
        with pytest.raises(FunctionFailure):
            async with tx.savepoint():
                await runtime.execute_mutation(tx, fn, {"name": "d"}, None)
        assert tx.writes == {}
    assert await value(runtime, "query", "calls:items_of", {"a": "d"}) == []
    assert await value(runtime, "query", "counters:get", {"name": "d"}) == 0
    assert await value(runtime, "query", "calls:scheduled") == 0


async def test_concurrent_nested_calls_keep_to_their_own_savepoints(runtime: Runtime) -> None:
    await runtime.call("mutation", "calls:concurrent", {"name": "e"})
    assert await value(runtime, "query", "calls:items_of", {"a": "e"}) == ["outer"]
    assert await value(runtime, "query", "counters:get", {"name": "e-ok"}) == 1
    assert await value(runtime, "query", "counters:get", {"name": "e-bad"}) == 0
    assert await value(runtime, "query", "calls:jobs_of") == ["e-ok"]
    assert await value(runtime, "query", "calls:scheduled") == 1


async def test_a_nested_error_is_a_runtime_error_redacted_outside_dev_mode(namespace: str) -> None:
    async with open_runtime(BASIC_APP, namespace, dev=True) as rt:
        assert "caught RuntimeError" in (shown := await value(rt, "mutation", "calls:outer_boom", {"name": "f"}))
        assert "ValueError: nested detail" in shown
    async with open_runtime(BASIC_APP, namespace, dev=False) as rt:
        shown = await value(rt, "mutation", "calls:outer_boom", {"name": "f"})
        assert re.fullmatch(r"caught RuntimeError: \[Request ID: \w+\] Server Error", shown), shown


async def test_nested_arguments_and_results_are_validated(runtime: Runtime) -> None:
    refused = await value(runtime, "mutation", "calls:bad_args")
    assert refused.startswith("ArgumentValidationError: invalid arguments for counters:inc: `name`"), refused
    refused = await value(runtime, "query", "calls:bad_return")
    assert "calls:wrong_return returned a value that does not match its declared type" in refused


async def test_calls_nest_at_most_eight_deep(runtime: Runtime) -> None:
    assert await value(runtime, "mutation", "calls:recurse", {"n": 8}) == 8
    assert await value(runtime, "query", "calls:recurse_query", {"n": 8}) == 8
    for kind, path in [("mutation", "calls:recurse"), ("query", "calls:recurse_query")]:
        with pytest.raises(FunctionFailure, match=rf"ctx.run_{kind}\({path}\): functions call functions at most 8 levels deep"):
            await value(runtime, kind, path, {"n": 9})


async def test_a_mutation_cannot_run_an_action_nor_a_query_a_mutation(runtime: Runtime) -> None:
    with pytest.raises(FunctionFailure, match=r"MutationCtx has no run_action: .*ctx\.scheduler\.run_after\(0, ref, args\)"):
        await runtime.call("mutation", "calls:calls_action", {})
    with pytest.raises(FunctionFailure, match="QueryCtx has no run_mutation: a query cannot run a mutation"):
        await runtime.call("query", "calls:query_calls_mutation", {})
    assert await value(runtime, "query", "counters:get", {"name": "x"}) == 0


async def test_conflicts_between_callers_of_nested_functions_are_retried(runtime: Runtime) -> None:
    """The nested query's read is the caller's read: concurrent read-modify-writes through it
    conflict and are retried instead of losing updates; so are concurrent nested increments."""
    await asyncio.gather(*(runtime.call("mutation", "calls:bump_via_query", {"name": "g"}) for _ in range(12)))
    await asyncio.gather(*(runtime.call("mutation", "calls:inc_nested", {"name": "h"}) for _ in range(12)))
    assert await value(runtime, "query", "counters:get", {"name": "g"}) == 12
    assert await value(runtime, "query", "counters:get", {"name": "h"}) == 12


async def test_the_callers_time_limit_covers_its_nested_calls(namespace: str) -> None:
    async with open_runtime(BASIC_APP, namespace, mutation_timeout=0.3) as rt:
        with pytest.raises(FunctionFailure, match=r"calls:waits_nested ran longer than 0.3 s"):
            await rt.call("mutation", "calls:waits_nested", {"seconds": 30})
        assert await value(rt, "query", "calls:items_of", {"a": "waited"}) == []


StartServer = Callable[..., ServerProcess]


@pytest.mark.e2e
async def test_nested_calls_over_http_and_live_queries(start_server: StartServer) -> None:
    server = start_server("serve")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c, RippleClient(server.url) as client:
        updates = client.subscribe("calls:via", {"name": "live"})
        assert await updates.__anext__() == 0

        body = (await call(c, "mutation", "calls:outer", {"name": "live", "fail_inner": True})).json()
        assert body["status"] == "success" and body["value"]["inner"] == {"failed": "live"}, body
        body = (await call(c, "mutation", "calls:outer", {"name": "k", "fail_inner": True, "catch": False})).json()
        assert body["status"] == "error" and body["errorData"] == {"failed": "k"}, body
        assert (await call(c, "query", "calls:jobs_of")).json()["value"] == []
        assert (await call(c, "query", "counters:get", {"name": "k"})).json()["value"] == 0

        # The live query read the counter only through its nested query: a write to it reaches it.
        assert (await call(c, "mutation", "calls:outer", {"name": "live"})).json()["value"]["inner"] == 1
        assert await updates.__anext__() == 1
        await client.mutation("counters:inc", {"name": "live", "by": 2})
        assert await updates.__anext__() == 3
        await updates.aclose()

        # The watchdog stops a nested function holding the loop; the caller sees its timeout.
        body = (await call(c, "mutation", "calls:spins_nested")).json()
        assert re.fullmatch(r"\[Request ID: \w+\] runaway:spin ran longer than 1 s without awaiting", body["value"]), body
        assert (await c.get("/_ripple/health")).status_code == 200


# -- the rows a mutation keeps (Transaction.rows_seen) -------------------------------------------


async def test_a_patch_of_a_document_just_read_sends_no_second_select(runtime: Runtime,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    await value(runtime, "mutation", "counters:inc", {"name": "seen"})
    statements: list[str] = []
    execute = Transaction.execute

    async def counted(self: Transaction, method: str, statement: str, *args: Any) -> Any:
        statements.append(statement)
        return await execute(self, method, statement, *args)

    monkeypatch.setattr(Transaction, "execute", counted)
    assert await value(runtime, "mutation", "counters:inc", {"name": "seen"}) == 2  # index read, then patch
    get = runtime.catalog.table("counters").sql.get
    assert get not in statements and any(s.startswith("UPDATE") for s in statements), statements
    assert await value(runtime, "query", "counters:get", {"name": "seen"}) == 2


@pytest.mark.parametrize("concurrently", [False, True])
async def test_a_rolled_back_nested_write_is_not_what_a_later_patch_merges_into(runtime: Runtime,
                                                                                concurrently: bool) -> None:
    await value(runtime, "mutation", "counters:inc", {"name": "kept"})
    doc = await value(runtime, "mutation", "calls:renamed_after_a_failed_nested_write",
                      {"name": "kept", "concurrently": concurrently})
    assert (doc["name"], doc["value"]) == ("kept-renamed", 1)
    assert await value(runtime, "query", "counters:get", {"name": "kept-renamed"}) == 1
