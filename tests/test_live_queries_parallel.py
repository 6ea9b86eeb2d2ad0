"""One tick's re-runs over several connections sharing its snapshot (server/core/tick_runs.py),
against real PostgreSQL, in process and through a real server with websocket clients: results
are consistent at the ts they are published with, more than one connection is used, a helper
connection killed mid-tick costs nothing but a re-run, and stopping during a parallel tick
leaves every pooled connection free."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import websockets

from client_sdk.protocol import decode_ts
from server.core.runtime import Runtime
from server.core.shared_queries import SharedQuery
from server.core.subscriptions import SubscriptionManager
from server.core.tick_runs import helpers_wanted

from conftest import BASIC_APP, ServerProcess, open_runtime, until

POOL = 8  # connections of the runtime's pool: the shared test PostgreSQL allows 100 in all
QUERIES = 32  # distinct subscriptions one write touches
IN_TRANSACTION = """
SELECT pid, xact_start FROM pg_stat_activity
WHERE application_name = $1 AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
ORDER BY xact_start
"""


class Recorder:
    """A subscriber noting, at every notification, the ts its query's result is published at
    (what the Transition's endVersion carries) and the result."""

    def __init__(self, manager: SubscriptionManager, path: str, args: dict[str, Any]) -> None:
        self.manager = manager
        self.notes: list[tuple[int, Any]] = []
        self.sq: SharedQuery = manager.subscribe(path, args, None, None, self)

    def notify(self) -> None:
        result = self.sq.result
        value = orjson.loads(orjson.dumps(result.value)) if result is not None and result.ok else result
        self.notes.append((self.manager.current_ts, value))

    @property
    def latest(self) -> Any:
        return self.notes[-1][1] if self.notes else None


@pytest.fixture
async def rt(namespace: str) -> AsyncIterator[Runtime]:
    async with open_runtime(BASIC_APP, namespace, pool_max=POOL) as runtime:
        yield runtime


async def pair(runtime: Runtime) -> str:
    return str((await runtime.call("mutation", "pairs:setup", {})).value)


async def subscribe_all(manager: SubscriptionManager, ids: list[str], seconds: float,
                        path: str = "pairs:read_slowly") -> list[Recorder]:
    """QUERIES distinct subscriptions, each reading one of `ids` after `seconds` (waiting, or
    with pairs:read_busily keeping the loop busy); once all have their first result."""
    recorders = [Recorder(manager, path, {"id": ids[i % len(ids)], "seconds": seconds, "tag": i})
                 for i in range(QUERIES)]
    await until(lambda: all(r.notes for r in recorders) and not manager.stale, timeout=30)
    return recorders


async def all_connections_free(runtime: Runtime) -> None:
    """Every connection of the pool can be checked out: none was left out of it."""
    assert runtime.db.pool is not None
    conns = [await runtime.db.checkout(timeout=10) for _ in range(runtime.db.pool.get_max_size())]
    for conn in conns:
        assert not conn.is_in_transaction()
        await runtime.db.checkin(conn)


def test_a_tick_takes_helper_connections_only_for_enough_runs_and_spare_connections() -> None:
    assert helpers_wanted(1, 4, 20) == 0  # a single re-run pays for no snapshot export
    assert helpers_wanted(3, 4, 20) == 0
    assert helpers_wanted(4, 4, 20) == 1
    assert helpers_wanted(1000, 4, 20) == 3
    assert helpers_wanted(1000, 1, 20) == 0  # RIPPLE_LIVE_QUERY_PARALLELISM=1: one connection
    assert helpers_wanted(1000, 4, 3) == 1  # two spare connections stay for mutations
    assert helpers_wanted(1000, 4, 1) == 0


async def test_results_computed_on_several_connections_are_consistent_at_their_published_ts(rt: Runtime) -> None:
    """Each write bumps two documents together; half the queries read one, half the other, and
    the writes land while ticks run. Every result published at ts T shows exactly the bumps
    committed at or before T, so queries run on different connections at one tick agree. A
    helper that ran on a snapshot of its own (not the tick's) would see later bumps."""
    manager = SubscriptionManager(rt)
    await manager.start()
    try:
        setups = [await rt.call("mutation", "pairs:setup", {}) for _ in range(2)]
        ids, created = [str(o.value) for o in setups], max(int(o.ts or 0) for o in setups)
        recorders = await subscribe_all(manager, ids, seconds=0.01)
        helper_runs = rt.metrics.value("ripple_live_query_parallel_runs_total")
        commits: list[int] = []
        for _ in range(12):
            outcome = await rt.call("mutation", "pairs:bump_two_docs", {"first": ids[0], "second": ids[1]})
            assert outcome.ts is not None
            commits.append(outcome.ts)
            await asyncio.sleep(0.01)  # shorter than a tick's runs: writes land while they run
        await until(lambda: all(r.latest["left"] == len(commits) for r in recorders), timeout=30)
        by_ts: dict[int, set[float]] = {}
        for r in recorders:
            for ts, doc in r.notes:
                if doc is None:  # a tick whose snapshot predates the insert ran the new subscription: right at its ts
                    assert ts < created, (ts, created)
                    continue
                assert doc["left"] == doc["right"] == sum(1 for c in commits if c <= ts), (ts, doc, commits)
                by_ts.setdefault(ts, set()).add(doc["left"])
        assert all(len(values) == 1 for values in by_ts.values()), by_ts
        assert rt.metrics.value("ripple_live_query_parallel_runs_total") > helper_runs  # helpers ran some
        # The last write's results all went out at its ts.
        assert {r.notes[-1][0] for r in recorders} == {commits[-1]}
    finally:
        await manager.stop()
    await all_connections_free(rt)


async def test_one_connection_when_parallelism_is_1(namespace: str) -> None:
    async with open_runtime(BASIC_APP, namespace, pool_max=POOL, live_query_parallelism=1) as runtime:
        manager = SubscriptionManager(runtime)
        await manager.start()
        try:
            ids = [await pair(runtime)]
            recorders = await subscribe_all(manager, ids, seconds=0.0)
            await runtime.call("mutation", "pairs:bump", {"id": ids[0]})
            await until(lambda: all(r.latest["left"] == 1 for r in recorders))
            assert runtime.metrics.value("ripple_live_query_parallel_runs_total") == 0
        finally:
            await manager.stop()


async def test_queries_that_keep_the_loop_busy_get_no_helper_connections(rt: Runtime) -> None:
    """Helpers join a tick only after a batch that mostly waited (tick_runs.WAITED): queries
    that wait get them (the tests above), queries spending their time in Python do not, since
    more connections would share the loop's one core."""
    manager = SubscriptionManager(rt)
    await manager.start()
    try:
        ids = [await pair(rt)]
        recorders = await subscribe_all(manager, ids, seconds=0.004, path="pairs:read_busily")
        helper_runs = rt.metrics.value("ripple_live_query_parallel_runs_total")
        for bump in (1, 2, 3):
            await rt.call("mutation", "pairs:bump", {"id": ids[0]})
            await until(lambda b=bump: all(r.latest["left"] == b for r in recorders), timeout=30)
        assert rt.metrics.value("ripple_live_query_parallel_runs_total") == helper_runs
    finally:
        await manager.stop()
    await all_connections_free(rt)


async def test_a_helper_connection_killed_mid_tick_costs_a_re_run_only(rt: Runtime, pg_url: str, namespace: str) -> None:
    """While a tick runs its queries on several connections, every connection of the tick but
    its own (the oldest transaction) is ended by PostgreSQL: their queries run again, every
    subscriber gets the new value, and no pooled connection is lost for good."""
    manager = SubscriptionManager(rt)
    await manager.start()
    observer = await asyncpg.connect(pg_url)
    try:
        ids = [await pair(rt)]
        recorders = await subscribe_all(manager, ids, seconds=0.05)
        await rt.call("mutation", "pairs:bump", {"id": ids[0]})
        killed: list[int] = []
        deadline = asyncio.get_running_loop().time() + 10
        while not killed:
            rows = await observer.fetch(IN_TRANSACTION, f"ripple {namespace}")
            if len(rows) >= 3:  # the tick's transaction and at least two helpers
                for row in rows[1:]:
                    await observer.fetchval("SELECT pg_terminate_backend($1)", row["pid"])
                    killed.append(row["pid"])
            else:
                assert asyncio.get_running_loop().time() < deadline, "no tick on several connections was seen"
                await asyncio.sleep(0.002)
        await until(lambda: all(r.latest["left"] == 1 for r in recorders), timeout=30)
        assert rt.metrics.value("ripple_live_query_helpers_lost_total") >= 1
        bump_ts = max(ts for r in recorders for ts, _ in r.notes)
        assert all(r.notes[-1] == (bump_ts, r.latest) and r.latest["right"] == 1 for r in recorders)
    finally:
        await observer.close()
        await manager.stop()
    await all_connections_free(rt)


async def test_stopping_during_a_parallel_tick_leaves_no_connection_out_of_the_pool(
        rt: Runtime, pg_url: str, namespace: str) -> None:
    manager = SubscriptionManager(rt)
    await manager.start()
    observer = await asyncpg.connect(pg_url)
    stopped = False
    try:
        ids = [await pair(rt)]
        await subscribe_all(manager, ids, seconds=0.05)
        helper_runs = rt.metrics.value("ripple_live_query_parallel_runs_total")
        await rt.call("mutation", "pairs:bump", {"id": ids[0]})
        await until(lambda: rt.metrics.value("ripple_live_query_parallel_runs_total") > helper_runs, interval=0.002)
        stopped = True
        await manager.stop()  # runs are under way on several connections
        await all_connections_free(rt)
        # Nothing of the tick is left running or open in PostgreSQL either (a discarded
        # connection's backend notices its closed socket a moment later).
        for _ in range(500):
            if not await observer.fetch(IN_TRANSACTION, f"ripple {namespace}"):
                break
            await asyncio.sleep(0.01)
        assert await observer.fetch(IN_TRANSACTION, f"ripple {namespace}") == []
    finally:
        await observer.close()
        if not stopped:
            await manager.stop()


async def watch_until(ws: Any, doc_id: str, left: int) -> int:
    """Read `ws`'s Transitions until its query shows the pair with `left`; that Transition's
    endVersion ts."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message["type"] != "Transition":
            continue
        for mod in message["modifications"]:
            assert mod["type"] == "QueryUpdated", mod
            if mod["value"]["_id"] == doc_id and mod["value"]["left"] == left:
                assert mod["value"]["right"] == left
                return decode_ts(message["endVersion"]["ts"])


@pytest.mark.e2e
async def test_websocket_clients_of_many_queries_one_write_touched_all_get_its_ts(
        start_server: Callable[..., ServerProcess]) -> None:
    """QUERIES websocket clients of a real server, each subscribed to its own query over one of
    two documents that every write bumps together: the Transitions carrying a write reach every
    client with the same endVersion ts, though the server ran the queries on several
    connections."""
    server = start_server("serve")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        async def mutation(path: str, args: dict[str, Any]) -> Any:
            body = (await http.post("/api/mutation", json={"path": path, "args": args})).json()
            assert body["status"] == "success", body
            return body["value"]

        ids = [await mutation("pairs:setup", {}), await mutation("pairs:setup", {})]
        url = server.url.replace("http://", "ws://") + "/api/sync"
        sockets = [await websockets.connect(url) for _ in range(QUERIES)]
        try:
            for i, ws in enumerate(sockets):
                await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0}))
                await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
                    {"type": "Add", "queryId": 0, "udfPath": "pairs:read_slowly",
                     "args": [{"id": ids[i % 2], "seconds": 0.01, "tag": i}]}]}))
            await asyncio.gather(*(watch_until(ws, ids[i % 2], 0) for i, ws in enumerate(sockets)))
            runs = server.metrics().get("ripple_live_query_parallel_runs_total", 0.0)
            for bump in (1, 2):
                await mutation("pairs:bump_two_docs", {"first": ids[0], "second": ids[1]})
                seen = await asyncio.gather(*(watch_until(ws, ids[i % 2], bump) for i, ws in enumerate(sockets)))
                assert len(set(seen)) == 1, seen
            assert server.metrics()["ripple_live_query_parallel_runs_total"] > runs
        finally:
            for ws in sockets:
                await ws.close()
