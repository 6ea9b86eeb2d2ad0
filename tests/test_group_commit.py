"""Group commit (server/core/group_commit.py): the mutations queued on one hot key run in one
transaction and commit together; each caller gets its own result once the
COMMIT succeeded, one failing member does not fail the others, a group that does not commit
answers no one as committed (its members are retried, never applied twice), an idempotent
resend is answered from its stored result, and live queries see the group's writes at once.

Groups are made on purpose: a connection of the test holds the counter's row (`Blocker`, from
test_hot_keys.py), so the first member of a group waits in PostgreSQL while the next calls join
its group (counted by `ripple_mutation_queued_total`); then the test lets it go. Each test checks
the group it made with `ripple_mutation_group_commits_total` and `ripple_mutation_grouped_total`,
so a test fails if the calls ran one transaction each."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from test_connection_faults import lose_commits
from test_hot_keys import Blocker, blocker_for, heat, until_async

from server.core.contexts import Outcome
from server.core.runtime import Runtime
from server.errors import FunctionFailure
from server.wire import decode_ts

from conftest import ServerProcess, call, database_url, open_runtime, until

APP = Path(__file__).parent / "apps" / "hotkeys"
Call = Callable[[], Awaitable[Outcome]]


def metric(rt: Runtime, name: str) -> float:
    return rt.metrics.value(name)


def inc(rt: Runtime, name: str, key: tuple[str, int] | None = None) -> Call:
    return lambda: rt.call("mutation", "counters:inc", {"name": name}, idempotency_key=key)


async def value(rt: Runtime, name: str) -> int:
    return int((await rt.call("query", "counters:get", {"name": name})).value)


async def waiting(blocker: Blocker, n: int) -> bool:
    return await blocker.waiting() == n


async def one_group(rt: Runtime, blocker: Blocker, name: str, calls: list[Call], *, update: bool = False) -> list[Any]:
    """Start `calls` so that they make one group: the first waits in PostgreSQL for the
    blocker's lock on `name` (changed when `update`), each next one joins its group in turn;
    then the blocker lets go. Their outcomes (or exceptions), in order."""
    async with blocker.holding(name, update=update):
        tasks = [asyncio.create_task(calls[0]())]
        await until_async(lambda: waiting(blocker, 1))
        for c in calls[1:]:
            queued = metric(rt, "ripple_mutation_queued_total")
            tasks.append(asyncio.create_task(c()))
            await until(lambda q=queued: metric(rt, "ripple_mutation_queued_total") == q + 1)
    return list(await asyncio.gather(*tasks, return_exceptions=True))


@pytest.fixture
async def rt(namespace: str) -> AsyncIterator[Runtime]:
    async with open_runtime(APP, namespace, dev=False) as runtime:
        runtime.hot_keys.wait_seconds = 30.0  # the test's hold is no turn never given back
        assert runtime.group_commit is not None
        runtime.group_commit.seconds = 30.0  # ... nor a group that ran too long
        yield runtime


@pytest.fixture
async def hot(rt: Runtime, namespace: str) -> AsyncIterator[Blocker]:
    """Counter "a" at 3 and hot (its increments queue, so group)."""
    await rt.call("mutation", "counters:inc", {"name": "a"})
    async with blocker_for(rt, namespace) as blocker:
        await heat(rt, blocker, "a")
        yield blocker


class Groups:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.commits0 = metric(rt, "ripple_mutation_group_commits_total")
        self.grouped0 = metric(rt, "ripple_mutation_grouped_total")

    def since(self) -> tuple[int, int]:
        """(group commits, mutations run in groups) since this was made."""
        return (int(metric(self.rt, "ripple_mutation_group_commits_total") - self.commits0),
                int(metric(self.rt, "ripple_mutation_grouped_total") - self.grouped0))


async def test_a_group_commits_once_and_answers_each_its_own(rt: Runtime, hot: Blocker) -> None:
    groups = Groups(rt)
    outcomes = await one_group(rt, hot, "a", [inc(rt, "a") for _ in range(5)])
    assert [o.value for o in outcomes] == [4, 5, 6, 7, 8]  # serial, in the order they joined
    assert groups.since() == (1, 5)
    assert len({o.ts for o in outcomes}) == 1 and outcomes[0].ts is not None  # one commit, one ts
    async with rt.db.acquire() as conn:
        rows = await conn.fetch("SELECT writes FROM _ripple_commits WHERE ts = $1", outcomes[0].ts)
    assert len(rows) == 1
    writes = json.loads(rows[0]["writes"]) if isinstance(rows[0]["writes"], str) else rows[0]["writes"]
    assert len(writes) == 1  # the counter written five times: one entry in the change log
    assert await value(rt, "a") == 8
    assert rt.hot_keys.held_count() == 0


async def test_a_group_that_ran_too_long_hands_the_rest_to_the_next(rt: Runtime, hot: Blocker) -> None:
    assert rt.group_commit is not None
    rt.group_commit.seconds = 0.0  # the first member (held by the blocker) is all a group runs
    groups = Groups(rt)
    outcomes = await one_group(rt, hot, "a", [inc(rt, "a") for _ in range(4)])
    assert [o.value for o in outcomes] == [4, 5, 6, 7]  # still in the order they joined
    assert groups.since() == (4, 4)  # past its time, each group runs one member: the one it began with
    assert outcomes[0].ts is not None and outcomes[0].ts < outcomes[1].ts < outcomes[2].ts < outcomes[3].ts


async def test_a_failing_member_fails_alone(rt: Runtime, hot: Blocker) -> None:
    def below(limit: int) -> Call:
        return lambda: rt.call("mutation", "counters:inc_below", {"name": "a", "limit": limit})

    # inc_below touches a hot key when it succeeds: remembered (by its arguments), it queues
    # (and groups) from now on.
    assert [(await below(5)()).value, (await below(100)()).value] == [4, 5]
    groups = Groups(rt)
    reruns = metric(rt, "ripple_mutation_group_reruns_total")
    outcomes = await one_group(rt, hot, "a", [inc(rt, "a"), below(5), inc(rt, "a"), below(5), below(100)])
    assert groups.since() == (1, 5)
    # The first failure (no savepoints yet) rolls the group back; it runs again without that
    # member, each under a savepoint: the second failure is undone alone.
    assert metric(rt, "ripple_mutation_group_reruns_total") - reruns == 1
    assert outcomes[0].value == 6
    assert isinstance(outcomes[1], FunctionFailure) and outcomes[1].data == {"code": "OverLimit", "value": 7}
    assert outcomes[2].value == 7  # the failed member's write was undone
    assert isinstance(outcomes[3], FunctionFailure) and outcomes[3].data == {"code": "OverLimit", "value": 8}
    assert outcomes[4].value == 8
    assert outcomes[0].ts == outcomes[2].ts == outcomes[4].ts
    assert await value(rt, "a") == 8


async def test_a_group_that_conflicts_is_retried_and_applied_once(rt: Runtime, hot: Blocker) -> None:
    groups = Groups(rt)
    retries = metric(rt, "ripple_mutation_retries_total")
    # The blocker changes the counter's row: the group's first member, which read it before,
    # cannot update it after the blocker commits: the whole group conflicts.
    outcomes = await one_group(rt, hot, "a", [inc(rt, "a") for _ in range(4)], update=True)
    assert sorted(o.value for o in outcomes) == [4, 5, 6, 7]
    assert await value(rt, "a") == 7  # each applied exactly once
    assert metric(rt, "ripple_mutation_retries_total") - retries >= 4  # every member was told to retry
    commits, grouped = groups.since()
    assert grouped == 4 and 1 <= commits < 4  # the retries grouped again


@pytest.mark.parametrize("ran", [False, True], ids=["commit-never-arrived", "commit-answer-lost"])
async def test_a_group_whose_commit_is_cut_answers_the_truth(rt: Runtime, hot: Blocker, monkeypatch: pytest.MonkeyPatch,
                                                            ran: bool) -> None:
    groups = Groups(rt)
    lose_commits(monkeypatch, ran=ran)
    outcomes = await one_group(rt, hot, "a", [inc(rt, "a") for _ in range(3)])
    assert sorted(o.value for o in outcomes) == [4, 5, 6]
    assert await value(rt, "a") == 6  # nothing lost, nothing applied twice
    resolved = "committed" if ran else "not_committed"
    assert rt.metrics.value("ripple_commit_resolutions_total", outcome=resolved) == 1
    commits, grouped = groups.since()
    # Resolved as committed: one group, its answers stand. Not committed: its members ran again,
    # in groups again (a group that did not commit is not counted).
    assert grouped == 3
    assert commits == 1 if ran else 1 <= commits <= 3


async def test_an_idempotent_resend_is_answered_from_its_stored_result(rt: Runtime, hot: Blocker) -> None:
    groups = Groups(rt)
    key = ("session-1", 7)
    # The call and its resend in one group: the resend finds the row the call stored in the
    # group's transaction, and answers with the same value; the counter moves once for both.
    outcomes = await one_group(rt, hot, "a", [inc(rt, "a", key), inc(rt, "a"), inc(rt, "a", key)])
    assert [o.value for o in outcomes] == [4, 5, 4]
    assert groups.since() == (1, 3)
    assert outcomes[2].ts == outcomes[0].ts
    # ... and after the commit, once more.
    again = await inc(rt, "a", key)()
    assert again.value == 4 and again.ts is not None and again.ts >= outcomes[0].ts
    assert await value(rt, "a") == 5


async def test_many_callers_end_at_exact_totals_in_groups(rt: Runtime, hot: Blocker) -> None:
    groups = Groups(rt)
    sem = asyncio.Semaphore(40)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            await inc(rt, "a" if i % 2 else "b")()
            ok += 1

    await asyncio.gather(*(one(i) for i in range(400)))
    assert ok == 400
    assert await value(rt, "a") == 3 + 200
    assert await value(rt, "b") == 200
    commits, grouped = groups.since()
    assert grouped > commits > 0  # some groups had several members
    assert rt.hot_keys.held_count() == 0


async def test_failures_among_many_callers_leave_exact_totals(rt: Runtime, hot: Blocker) -> None:
    # inc_below(limit 0) always fails (after its write); remembered, it groups with the increments.
    with pytest.raises(FunctionFailure):
        await rt.call("mutation", "counters:inc_below", {"name": "a", "limit": 0})
    assert (await rt.call("mutation", "counters:inc_below", {"name": "a", "limit": 10**9})).value == 4
    groups = Groups(rt)
    reruns = metric(rt, "ripple_mutation_group_reruns_total")
    sem = asyncio.Semaphore(40)
    succeeded = failed = 0

    async def one(i: int) -> None:
        nonlocal succeeded, failed
        limit = 0 if i % 5 == 0 else 10**9
        async with sem:
            try:
                await rt.call("mutation", "counters:inc_below" if i % 2 else "counters:inc",
                              {"name": "a", "limit": limit} if i % 2 else {"name": "a"})
            except FunctionFailure:
                failed += 1
            else:
                succeeded += 1

    await asyncio.gather(*(one(i) for i in range(300)))
    assert failed == 30 and succeeded == 270  # i % 10 == 5: inc_below with limit 0
    assert await value(rt, "a") == 4 + succeeded  # no failed member's write, every other one once
    commits, grouped = groups.since()
    assert grouped > commits > 0
    assert metric(rt, "ripple_mutation_group_reruns_total") > reruns  # failures happened in groups


async def test_group_commit_off_runs_one_transaction_each(namespace: str) -> None:
    async with open_runtime(APP, namespace, dev=False, group_commit=False) as rt:
        await rt.call("mutation", "counters:inc", {"name": "a"})
        await asyncio.gather(*(inc(rt, "a")() for _ in range(60)))
        assert await value(rt, "a") == 61
        assert metric(rt, "ripple_mutation_grouped_total") == 0


# -- end to end: live queries see a group's writes at its one ts ----------------------------------

async def _connect(url: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url, max_size=None)
    await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0}))
    return ws


async def _mutate(url: str, name: str) -> dict[str, Any]:
    ws = await _connect(url)
    try:
        await ws.send(json.dumps({"type": "Mutation", "requestId": 0, "udfPath": "counters:inc", "args": [{"name": name}]}))
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "MutationResponse":
                return dict(message)
    finally:
        await ws.close()


class ServerBlocker(Blocker):
    """Blocker for a server process's schema (no runtime in the test's process)."""

    def __init__(self, conn: asyncpg.Connection, table: str) -> None:
        self.conn, self.table = conn, table


@pytest.mark.e2e
async def test_live_queries_see_a_group_at_its_one_ts(start_server: Callable[..., ServerProcess], namespace: str) -> None:
    server = start_server(app_dir=APP, extra_env={"RIPPLE_GROUP_COMMIT_SECONDS": "30"})
    url = server.url.replace("http://", "ws://") + "/api/sync"
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        assert (await call(client, "mutation", "counters:inc", {"name": "a"})).json()["value"] == 1
        conn = await asyncpg.connect(database_url(), server_settings={"search_path": namespace})
        try:
            table = await conn.fetchval("SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename LIKE "
                                        "'%counters%'", namespace)
            blocker = ServerBlocker(conn, table)
            async with blocker.holding("a", update=True):  # two increments conflict: "a" is hot
                heats = [asyncio.create_task(call(client, "mutation", "counters:inc", {"name": "a"})) for _ in range(2)]
                await until_async(lambda: waiting(blocker, 2))
            assert sorted(r.json()["value"] for r in await asyncio.gather(*heats)) == [2, 3]

            watcher = await _connect(url)
            await watcher.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
                {"type": "Add", "queryId": 0, "udfPath": "counters:get", "args": [{"name": "a"}]}]}))
            seen: list[tuple[int, int]] = []  # (ts, value) of each Transition updating the query

            async def watch() -> None:
                while True:
                    message = json.loads(await watcher.recv())
                    if message["type"] == "Transition":
                        for m in message["modifications"]:
                            if m["type"] == "QueryUpdated":
                                seen.append((decode_ts(message["endVersion"]["ts"]), m["value"]))

            watching = asyncio.create_task(watch())
            await until(lambda: bool(seen))
            assert seen[-1][1] == 3
            before = server.metrics()
            async with blocker.holding("a", update=False):
                first = asyncio.create_task(_mutate(url, "a"))
                await until_async(lambda: waiting(blocker, 1))
                rest = []
                for i in range(3):
                    rest.append(asyncio.create_task(_mutate(url, "a")))
                    await until(lambda i=i: server.metrics().get("ripple_mutation_queued_total", 0)
                                >= before.get("ripple_mutation_queued_total", 0) + i + 1)
            responses = await asyncio.gather(first, *rest)
            after = server.metrics()
            assert after["ripple_mutation_group_commits_total"] - before.get("ripple_mutation_group_commits_total", 0) == 1
            assert after["ripple_mutation_grouped_total"] - before.get("ripple_mutation_grouped_total", 0) == 4
            assert [r["result"] for r in responses] == [4, 5, 6, 7] and all(r["success"] for r in responses)
            ts = {decode_ts(r["ts"]) for r in responses}
            assert len(ts) == 1
            await until(lambda: seen[-1][1] == 7)
            watching.cancel()
            await watcher.close()
            # The subscriber went from 3 to 7 in one Transition, at the group's ts: no member's
            # write was seen without the others'.
            assert seen[-1] == (ts.pop(), 7) and seen[-2][1] == 3
        finally:
            await conn.close()
