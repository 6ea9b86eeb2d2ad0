"""Idempotent mutations: a (session id, request id) key, per caller, answers only a resend of the
same call (docs/internals.md, Transactions)."""

from __future__ import annotations

import asyncpg
import pytest

from server.core.contexts import Identity
from server.core.runtime import Runtime
from server.errors import IdempotencyKeyReused

from conftest import BASIC_APP, database_url, open_runtime

ALICE = Identity(subject="alice", issuer="https://auth.example", tokenIdentifier="https://auth.example|alice")
BOB = Identity(subject="bob", issuer="https://auth.example", tokenIdentifier="https://auth.example|bob")


async def count(rt: Runtime, name: str) -> int:
    return int((await rt.call("query", "counters:get", {"name": name})).value)


async def test_a_resend_of_the_same_call_replays_the_stored_result(runtime: Runtime) -> None:
    key = ("s-same", 1)
    first = await runtime.call("mutation", "counters:inc", {"name": "same", "by": 2}, idempotency_key=key)
    # the same arguments with their keys in another order are the same call
    again = await runtime.call("mutation", "counters:inc", {"by": 2, "name": "same"}, idempotency_key=key)
    assert first.value == again.value == 2
    assert await count(runtime, "same") == 2


async def test_a_resend_with_other_arguments_is_refused_and_runs_nothing(runtime: Runtime) -> None:
    key = ("s-args", 1)
    await runtime.call("mutation", "counters:inc", {"name": "args"}, idempotency_key=key)
    with pytest.raises(IdempotencyKeyReused, match="already used for counters:inc with other arguments") as err:
        await runtime.call("mutation", "counters:inc", {"name": "args-other"}, idempotency_key=key)
    assert err.value.code == "IdempotencyKeyReused"
    with pytest.raises(IdempotencyKeyReused):
        await runtime.call("mutation", "counters:inc", {"name": "args", "by": 5}, idempotency_key=key)
    assert await count(runtime, "args") == 1
    assert await count(runtime, "args-other") == 0


async def test_a_resend_calling_another_function_is_refused(runtime: Runtime) -> None:
    key = ("s-fn", 3)
    await runtime.call("mutation", "counters:inc", {"name": "fn"}, idempotency_key=key)
    with pytest.raises(IdempotencyKeyReused, match="already used for mutation counters:inc, not counters:fail"):
        await runtime.call("mutation", "counters:fail", {"code": "x"}, idempotency_key=key)


async def test_each_caller_has_its_own_keys(runtime: Runtime) -> None:
    """The same session id and request id from another identity (or admin, or anonymous) is
    another key: it runs, and never sees the first caller's result."""
    key = ("s-shared", 1)
    outs = [
        await runtime.call("mutation", "counters:inc", {"name": "callers"}, ALICE, idempotency_key=key),
        await runtime.call("mutation", "counters:inc", {"name": "callers"}, BOB, idempotency_key=key),
        await runtime.call("mutation", "counters:inc", {"name": "callers"}, None, idempotency_key=key),
        await runtime.call("mutation", "counters:inc", {"name": "callers"}, None, allow_internal=True, idempotency_key=key),
    ]
    assert [o.value for o in outs] == [1, 2, 3, 4]
    # each caller's resend gets its own result back, and another call under its key is refused
    again = await runtime.call("mutation", "counters:inc", {"name": "callers"}, BOB, idempotency_key=key)
    assert again.value == 2
    with pytest.raises(IdempotencyKeyReused):
        await runtime.call("mutation", "counters:inc", {"name": "other"}, ALICE, idempotency_key=key)
    # a call Bob never made under this key is not refused on account of Alice's
    with_args = await runtime.call("mutation", "counters:inc", {"name": "carol"}, Identity(tokenIdentifier="x|carol"),
                                   idempotency_key=key)
    assert with_args.value == 1
    assert await count(runtime, "callers") == 4


async def test_results_stored_before_the_upgrade_are_still_answered(namespace: str) -> None:
    """A table from before callers and calls were recorded is upgraded in place; its rows answer
    a resend as they did (whoever sends it, whatever it calls) until they expire."""
    conn = await asyncpg.connect(database_url())
    try:
        await conn.execute(f'CREATE SCHEMA "{namespace}"')
        await conn.execute(f'''
            CREATE TABLE "{namespace}"._ripple_mutation_results (
                session_id text NOT NULL, request_id bigint NOT NULL, value jsonb NOT NULL,
                log_lines jsonb NOT NULL, ts bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (session_id, request_id));
            INSERT INTO "{namespace}"._ripple_mutation_results (session_id, request_id, value, log_lines, ts)
            VALUES ('s-old', 1, '[41]', '[]', 0);''')
    finally:
        await conn.close()
    async with open_runtime(BASIC_APP, namespace) as rt:
        old = await rt.call("mutation", "counters:inc", {"name": "old"}, ALICE, idempotency_key=("s-old", 1))
        assert old.value == 41 and await count(rt, "old") == 0
        # new rows are per caller
        a = await rt.call("mutation", "counters:inc", {"name": "new"}, ALICE, idempotency_key=("s-new", 1))
        b = await rt.call("mutation", "counters:inc", {"name": "new"}, BOB, idempotency_key=("s-new", 1))
        assert (a.value, b.value) == (1, 2)
        await rt.load()  # bootstrapping an upgraded table again changes nothing
        again = await rt.call("mutation", "counters:inc", {"name": "new"}, BOB, idempotency_key=("s-new", 1))
        assert again.value == 2
