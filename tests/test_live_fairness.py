"""Live-query fairness (issue 9, item 5), through a real `ripple serve` and websocket clients:
one client's slow or numerous queries do not hold back another client's updates.

Each test checks an order of events, not a duration: the unaffected client sees a write while
the slow client's results are still being computed. Before runs could finish apart from the
tick, every result of a tick was published together, so the unaffected client's update could
only arrive with (or after) the slow client's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from client_sdk import RippleClient

from conftest import ServerProcess, Watcher, until

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]
SLOW = 1.5  # seconds a slow query takes: ample for the other client's update to arrive meanwhile


async def inc(url: str, name: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        body = (await c.post("/api/mutation", json={"path": "counters:inc", "args": {"name": name}})).json()
    assert body["status"] == "success", body


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/_ripple/metrics").text.splitlines():
        if line.startswith(name + " ") or (name.endswith("}") and line.startswith(name)):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} missing")


async def test_slow_re_runs_do_not_delay_another_clients_update(start_server: StartServer) -> None:
    server = start_server("serve")
    async with RippleClient(server.url) as slow_client, RippleClient(server.url) as other:
        slow = [Watcher(slow_client, "counters:slow_get", {"name": "shared", "seconds": SLOW, "tag": i}) for i in range(2)]
        fast = Watcher(other, "counters:get", {"name": "shared"})
        await until(lambda: all(w.values == [0] for w in slow) and fast.values == [0], timeout=30)
        await inc(server.url, "shared")  # touches all three queries
        await until(lambda: fast.values == [0, 1])
        # The other client has its update while the slow queries are still running.
        assert all(w.values == [0] for w in slow)
        await until(lambda: all(w.values == [0, 1] for w in slow), timeout=30)
        assert metric(server.url, "ripple_live_query_runs_apart_total") >= 2
        for w in (*slow, fast):
            await w.stop()


async def test_new_slow_subscriptions_do_not_delay_another_clients_update(start_server: StartServer) -> None:
    server = start_server("serve")
    async with RippleClient(server.url) as slow_client, RippleClient(server.url) as other:
        fast = Watcher(other, "counters:get", {"name": "mine"})
        await until(lambda: fast.values == [0])
        slow = [Watcher(slow_client, "counters:slow_get", {"name": "theirs", "seconds": SLOW, "tag": i}) for i in range(3)]
        await until(lambda: metric(server.url, "ripple_shared_queries") >= 4)  # subscribed, being computed
        await inc(server.url, "mine")
        await until(lambda: fast.values == [0, 1])
        assert all(w.values == [] for w in slow)  # their first results are still being computed
        await until(lambda: all(w.values == [0] for w in slow), timeout=30)
        for w in (*slow, fast):
            await w.stop()


async def test_numerous_queries_of_one_client_do_not_delay_another_clients_update(start_server: StartServer) -> None:
    server = start_server("serve")
    async with RippleClient(server.url) as busy_client, RippleClient(server.url) as other:
        # 40 queries of 50 ms of CPU each: every write to "many" costs 2 s of runs, in turns
        # (batches of runs overlap their waits, not their CPU: tick_runs.py).
        busy = [Watcher(busy_client, "counters:busy_get", {"name": "many", "seconds": 0.05, "tag": i}) for i in range(40)]
        fast = Watcher(other, "counters:get", {"name": "many"})
        await until(lambda: all(w.values == [0] for w in busy) and fast.values == [0], timeout=60)
        await inc(server.url, "many")
        await until(lambda: fast.values == [0, 1])
        assert not all(w.values == [0, 1] for w in busy)
        await until(lambda: all(w.values == [0, 1] for w in busy), timeout=60)
        for w in (*busy, fast):
            await w.stop()


async def test_a_result_computed_apart_is_not_published_when_a_later_commit_changed_what_it_read(
    start_server: StartServer,
) -> None:
    server = start_server("serve")
    async with RippleClient(server.url) as client:
        slow = Watcher(client, "counters:slow_get", {"name": "moving", "seconds": 2})
        await until(lambda: metric(server.url, "ripple_live_query_runs_apart_total") >= 1)
        await inc(server.url, "moving")  # commits while the first run (which read 0) is apart
        await until(lambda: slow.values != [], timeout=30)
        # The run that read 0 finished after the commit: publishing it at a ts past the commit
        # would show a value that was never current then. It ran again instead.
        assert slow.values == [1]
        await slow.stop()


async def test_a_live_query_that_timed_out_rests_instead_of_running_away_on_every_write(
    start_server: StartServer,
) -> None:
    server = start_server("serve", extra_env={"RIPPLE_BLOCKING_LIMIT": "0.5"})
    async with RippleClient(server.url) as client, RippleClient(server.url) as other:
        runaway = client.subscribe("runaway:spin_at", {"name": "hot", "at": 1})  # spins once hot >= 1
        assert await runaway.__anext__() == 0
        healthy = Watcher(other, "counters:get", {"name": "hot"})
        await until(lambda: healthy.values == [0])
        await inc(server.url, "hot")  # its re-run holds the loop for the 0.5 s limit, then rests 2 s
        await until(lambda: metric(server.url, "ripple_live_query_rests_total") >= 1)
        # Five more writes to what it read, during its rest: without the rest each would cost
        # everyone another half second of a blocked event loop.
        await asyncio.gather(*(inc(server.url, "hot") for _ in range(5)))
        await until(lambda: healthy.latest == 6)
        await until(lambda: metric(server.url, "ripple_live_query_rests_total") >= 2, timeout=20)  # one run after the rest
        assert metric(server.url, 'ripple_function_timeouts_total{kind="query"}') == 2
        await healthy.stop()
        await runaway.aclose()


def test_round_robin_takes_one_query_of_each_subscriber_in_turn() -> None:
    """The order a tick runs its queries in (shared_queries.round_robin): one of each
    subscriber's in turn, a shared query counting for one of its subscribers; queries of
    subscribers with one each keep their order."""
    from server.core.shared_queries import SharedQuery, round_robin

    a, b, c = object(), object(), object()

    def sq(name: str, *subscribers: object) -> SharedQuery:
        return SharedQuery((name, b"", b"", None), name, {}, None, None, subscribers=set(subscribers))  # type: ignore[arg-type]

    many = [sq("a1", a), sq("a2", a), sq("a3", a), sq("b1", b), sq("c1", c), sq("b2", b)]
    assert [q.path for q in round_robin(many)] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    single = [sq("c1", c), sq("a1", a), sq("b1", b)]
    assert [q.path for q in round_robin(single)] == ["c1", "a1", "b1"]
    assert [q.path for q in round_robin([sq("x"), sq("y")])] == ["x", "y"]  # no subscriber left: one owner, in order
