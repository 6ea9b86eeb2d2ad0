"""The query result cache (server/core/query_cache.py): cached answers equal cache-less runs at
the same ts whatever the writes in between; hits and misses as the HTTP API sees them; a write
in another process drops this process's entry before its next answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.core.subscriptions import SubscriptionManager

from conftest import ServerProcess, call, until

READS: list[tuple[str, dict[str, Any]]] = [
    ("items:by_range", {"index": "by_a", "eq": ["x"]}),
    ("items:by_range", {"index": "by_a", "eq": ["y"]}),
    ("items:by_range", {"index": "by_a_b", "eq": ["x"], "lower": ["gte", 1], "upper": ["lt", 3]}),
    ("items:by_range", {"index": "by_n", "eq": [], "lower": ["gt", 2]}),
    ("items:page", {"paginationOpts": {"numItems": 2, "cursor": None}, "min_n": 1}),
    ("items:first_last", {}),
    ("counters:get", {"name": "a"}),
    ("counters:get", {"name": "b"}),
]

writes = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(["x", "y", "z"]), st.integers(0, 4), st.integers(0, 5)),
    st.tuples(st.just("patch"), st.integers(0, 20), st.sampled_from(["x", "y", "z"]), st.integers(0, 5)),
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("inc"), st.sampled_from(["a", "b", "c"])),
)
steps = st.lists(st.one_of(writes.map(lambda w: ("write", w)), st.integers(0, len(READS) - 1).map(lambda r: ("read", r))),
                 min_size=20, max_size=60)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=steps)
async def test_cached_answers_equal_cacheless_runs(runtime: Any, plan: list[tuple[str, Any]]) -> None:
    """Hypothesis interleaves writes (two tables, index ranges, patches moving documents in and
    out of ranges, deletes) with reads at the latest ts, each read twice; every answer, cached or
    not, equals a run that bypasses the cache on a fresh snapshot at that moment."""
    manager = SubscriptionManager(runtime)
    await manager.start()
    ids: list[str] = []

    async def direct(path: str, args: dict[str, Any]) -> Any:
        fn = runtime.app.registry.resolve(path, kind="query")
        async with runtime.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            run = await runtime.execute_query(conn, fn, fn.validate_args(args), None)
        assert run.failure is None
        return run.value

    async def apply(write: tuple[Any, ...]) -> None:
        match write:
            case ("insert", a, b, n):
                ids.extend((await runtime.call("mutation", "items:insert_many", {"docs": [{"a": a, "b": b, "n": n}]})).value)
            case ("patch", i, a, n) if ids:
                await runtime.call("mutation", "items:patch", {"id": ids[i % len(ids)], "fields": {"a": a, "n": n}})
            case ("delete", i) if ids:
                await runtime.call("mutation", "items:clear_ids", {"ids": [ids.pop(i % len(ids))]})
            case ("inc", name):
                await runtime.call("mutation", "counters:inc", {"name": name})

    hits = runtime.metrics.value("ripple_query_cache_hits_total")
    try:
        for kind, step in plan:
            if kind == "write":
                await apply(step)
                continue
            path, args = READS[step]
            for _ in range(2):  # the second is a hit unless a commit intervened
                got = (await runtime.call("query", path, args)).value
                assert got == await direct(path, args), (path, args, plan)
        # A run that began before the tick read commits into its range is not stored (its
        # snapshot's ts is unknown); once the tick has caught up, a repeated read is a hit.
        latest = await runtime.latest_ts()
        await until(lambda: (runtime.query_cache.applied_ts or 0) >= latest)
        for _ in range(2):
            assert (await runtime.call("query", *READS[0])).value == await direct(*READS[0])
        assert runtime.metrics.value("ripple_query_cache_hits_total") > hits
    finally:
        await manager.stop()


def _cache_counts(server: ServerProcess) -> tuple[float, float]:
    m = server.metrics()
    return m.get("ripple_query_cache_hits_total", 0.0), m.get("ripple_query_cache_misses_total", 0.0)


async def test_http_hits_survive_unrelated_writes_and_a_write_in_another_process_invalidates(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A repeated HTTP query is a hit; a write to another table keeps it one; a write into what it
    read, made through a second process on the same database, is seen by the first process's
    very next call (a miss with the new value), without waiting."""
    a = start_server()
    b = start_server()
    async with httpx.AsyncClient(base_url=a.url) as ca, httpx.AsyncClient(base_url=b.url) as cb:
        assert (await call(ca, "query", "counters:get", {"name": "q"})).json()["value"] == 0
        hits, misses = _cache_counts(a)
        assert (await call(ca, "query", "counters:get", {"name": "q"})).json()["value"] == 0
        assert _cache_counts(a) == (hits + 1, misses)
        await call(ca, "mutation", "items:insert_many", {"docs": [{"a": "unrelated"}]})
        await call(ca, "mutation", "counters:inc", {"name": "other"})  # same table, another index key
        assert (await call(ca, "query", "counters:get", {"name": "q"})).json()["value"] == 0
        assert _cache_counts(a) == (hits + 2, misses)
        for expected in (1, 2, 3):
            assert (await call(cb, "mutation", "counters:inc", {"name": "q"})).status_code == 200
            assert (await call(ca, "query", "counters:get", {"name": "q"})).json()["value"] == expected
        assert _cache_counts(a)[1] == misses + 3


async def test_a_hit_is_a_cached_log_stream_entry_with_the_runs_lines(runtime: Any) -> None:
    """In dev mode a hit gives the client the lines of the run that computed the result, and its
    log stream entry says `cached` with those lines; the first call's entry does not."""
    manager = SubscriptionManager(runtime)
    await manager.start()
    try:
        first = await runtime.call("query", "loglevels:levels", {"tag": "cache"})
        second = await runtime.call("query", "loglevels:levels", {"tag": "cache"})
    finally:
        await manager.stop()
    assert first.log_lines and second.log_lines == first.log_lines
    entries = [e.to_json() for e in runtime.log_stream.page(0, 100).entries if e.function == "loglevels:levels"]
    assert [e["cached"] for e in entries] == [False, True]
    assert entries[1]["lines"] == entries[0]["lines"] != []


class _Subscriber:
    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


async def test_a_new_subscription_takes_a_ticks_cached_result_until_a_write_touches_it(runtime: Any) -> None:
    """A tick's run is stored: a later subscription to the same query (after the first left) and
    an HTTP-style call are hits; after a write into its range the next subscription runs it."""
    manager = SubscriptionManager(runtime)
    await manager.start()
    metrics = runtime.metrics
    try:
        async def subscribe_once() -> Any:
            subscriber = _Subscriber()
            sq = manager.subscribe("counters:get", {"name": "sub"}, None, None, subscriber)
            await until(lambda: sq.result is not None and sq not in manager.stale)
            manager.unsubscribe(sq, subscriber)
            return orjson.dumps(sq.result.value)

        executions = metrics.value("ripple_query_executions_total")
        hits = metrics.value("ripple_query_cache_hits_total")
        assert (await subscribe_once()) == b"0.0"
        assert metrics.value("ripple_query_executions_total") == executions + 1
        assert (await subscribe_once()) == b"0.0"
        assert (await runtime.call("query", "counters:get", {"name": "sub"})).value == 0
        assert metrics.value("ripple_query_cache_hits_total") == hits + 2
        assert metrics.value("ripple_query_executions_total") == executions + 1
        await runtime.call("mutation", "counters:inc", {"name": "sub"})
        await until(lambda: runtime.query_cache.applied_ts == manager.current_ts and len(runtime.query_cache) == 0)
        assert (await subscribe_once()) == b"1.0"
        assert metrics.value("ripple_query_executions_total") == executions + 2
    finally:
        await manager.stop()


async def test_read_your_writes_across_processes_round_after_round(start_server: Callable[..., ServerProcess]) -> None:
    """A client that got its mutation's answer from one process, then asks either process the
    same query (repeated: answered by the HTTP fast path when nothing changed), sees its write,
    however soon it asks: the NOTIFY of the commit may not have reached the other process yet,
    but a hit first reads the latest commit ts, after the request arrived (docs/query-cache.md)."""
    a = start_server()
    b = start_server()
    async with httpx.AsyncClient(base_url=a.url) as ca, httpx.AsyncClient(base_url=b.url) as cb:
        clients = (ca, cb)
        for client in clients:
            for _ in range(2):  # learned, then a hit
                assert (await call(client, "query", "counters:get", {"name": "ryw"})).json()["value"] == 0
        hits = _cache_counts(a)[0] + _cache_counts(b)[0]
        for expected in range(1, 21):
            writer, other = clients[expected % 2], clients[(expected + 1) % 2]
            assert (await call(writer, "mutation", "counters:inc", {"name": "ryw"})).json()["value"] == expected
            for reader in (other, writer, other):
                assert (await call(reader, "query", "counters:get", {"name": "ryw"})).json()["value"] == expected
        assert _cache_counts(a)[0] + _cache_counts(b)[0] >= hits + 20  # the third read of each round is a hit
