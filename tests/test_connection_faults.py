"""Losing the database connection in the middle of mutations.

In process, the commit path is broken exactly where it matters (a COMMIT whose answer is lost,
one that never arrived, the database gone for longer than the retry budget). End to end, a real
`ripple serve` reaches PostgreSQL only through a FaultProxy (tests/faultproxy.py): clients run
thousands of mutations, each inserting one mark under a key the client chose and returning the
mark's id, while a seeded chaos loop cuts the server's database connections at
random moments: all or some of them, with a RST or a FIN, after silently dropping the requests
(a COMMIT that never arrives) or the replies (a COMMIT that ran and whose answer is lost); it
also pauses and slows the traffic and ends Ripple's backends with pg_terminate_backend.
Afterwards every reported outcome is compared with the table:

* a mutation reported committed is there exactly once, under the id it returned;
* a mutation reported failed is not there; none is reported "outcome unknown";
* every mutation got an answer, and with the database back within seconds, every one committed
  (a failure before COMMIT is retried; an interrupted COMMIT is resolved, not guessed).

Websocket clients also drop their own connection now and then and resend what was unanswered
with the same request ids, as the official clients do. RIPPLE_FAULT_SEED picks another seed
(the default is fixed, so that a failure reproduces).

How many faults strike depends on how long the work runs, and so on the machine: the clients
therefore do a fixed least amount of work and then keep going until at least MIN_FAULTS
faults have struck (and, where the test asserts it, the answer of a COMMIT was lost), so that a
fast machine and a slow one see the same amount of chaos.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import random
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from asyncpg.pool import PoolConnectionProxy
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.api.app import build_app
from server.core.database import connection_failure, rollback
from server.core.runtime import Runtime
from server.errors import DatabaseUnavailable

from conftest import APPS, ServerProcess, open_proxied_runtime
from faultproxy import FaultProxy, backend_of, through

FAULTS_APP = APPS / "faults"
SEED = int(os.environ.get("RIPPLE_FAULT_SEED", "7"))
UNKNOWN = "whether it committed is unknown"  # what the server says when it cannot tell
MIN_FAULTS = 20  # every chaos test's work goes on until at least this many faults struck


@dataclass
class Outcome:
    committed: bool | None  # None: the server could not tell
    value: Any = None
    message: str = ""


@dataclass
class Ledger:
    """What the clients were told, by key."""

    sent: set[str] = field(default_factory=set)
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def record(self, key: str, outcome: Outcome) -> None:
        assert key not in self.outcomes, f"{key} answered twice"
        self.outcomes[key] = outcome

    def counts(self) -> collections.Counter[str]:
        names = {True: "committed", False: "failed", None: "unknown"}
        return collections.Counter(names[o.committed] for o in self.outcomes.values())


@dataclass
class Faulty:
    server: ServerProcess
    proxy: FaultProxy
    admin: asyncpg.Pool  # straight to PostgreSQL, not through the proxy
    namespace: str

    async def marks(self) -> dict[str, list[str]]:
        rows = await self.admin.fetch(f'SELECT id, doc->>\'key\' AS key FROM "{self.namespace}".marks')
        found: dict[str, list[str]] = collections.defaultdict(list)
        for row in rows:
            found[row["key"]].append(row["id"])
        return found

    async def check(self, ledger: Ledger) -> dict[str, Any]:
        """Compare every outcome with the table; return the figures."""
        marks = await self.marks()
        lost = ledger.sent - set(ledger.outcomes)
        duplicated = {k: ids for k, ids in marks.items() if len(ids) > 1}
        strangers = set(marks) - ledger.sent
        wrong = {}
        for key, outcome in ledger.outcomes.items():
            ids = marks.get(key, [])
            if outcome.committed and ids != [outcome.value]:
                wrong[key] = f"reported committed as {outcome.value}, table has {ids}"
            elif outcome.committed is False and ids:
                wrong[key] = f"reported failed ({outcome.message[:120]!r}), table has {ids}"
        counts = ledger.counts()
        figures = {**counts, "lost": len(lost), "duplicated": len(duplicated), "wrong": len(wrong), **self.metrics()}
        print(f"seed {SEED}: {figures}")
        assert not wrong, dict(itertools.islice(wrong.items(), 10))
        assert not duplicated and not strangers and not lost, (duplicated, strangers, lost)
        assert counts["unknown"] == 0 and counts["failed"] == 0, [
            o.message for o in ledger.outcomes.values() if not o.committed][:5]
        return figures

    def metrics(self) -> dict[str, int]:
        """How often the server retried and resolved (its /_ripple/metrics)."""
        text = httpx.get(f"{self.server.url}/_ripple/metrics", timeout=10).text
        wanted = ("ripple_connection_retries_total", "ripple_commit_resolutions_total")
        return {line.split(" ")[0].removeprefix("ripple_"): int(float(line.split(" ")[1]))
                for line in text.splitlines() if line.startswith(wanted)}


# -- in process: the commit path broken exactly where it matters ----------------------------------

@pytest.fixture
async def proxied(namespace: str) -> AsyncIterator[tuple[Runtime, FaultProxy]]:
    """The faults app loaded in process over a FaultProxy, with a 1-second retry budget."""
    async with open_proxied_runtime(FAULTS_APP, namespace, pool_max=5, retry_seconds=1.0) as pair:
        yield pair


def lose_commits(monkeypatch: pytest.MonkeyPatch, *, ran: bool, then: Callable[[], None] = lambda: None) -> None:
    """The next commit tail and COMMIT loses its connection: after PostgreSQL ran it (`ran`: the
    answer is lost) or before it was sent."""
    original = PoolConnectionProxy.execute
    armed = [True]

    async def execute(self: PoolConnectionProxy, query: str, *args: Any, **kwargs: Any) -> Any:
        if not (armed[0] and query.endswith("; COMMIT")):
            return await original(self, query, *args, **kwargs)
        armed[0] = False
        if ran:
            await original(self, query, *args, **kwargs)
        then()
        self.terminate()
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    monkeypatch.setattr(PoolConnectionProxy, "execute", execute)


async def marks_of(runtime: Runtime) -> dict[str, list[str]]:
    async with runtime.db.acquire() as conn:
        rows = await conn.fetch("SELECT id, doc->>'key' AS key FROM marks ORDER BY id")
    found: dict[str, list[str]] = collections.defaultdict(list)
    for row in rows:
        found[row["key"]].append(row["id"])
    return dict(found)


async def test_a_commit_whose_answer_was_lost_is_reported_committed(proxied: tuple[Runtime, FaultProxy],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, _ = proxied
    lose_commits(monkeypatch, ran=True)
    outcome = await runtime.call("mutation", "marks:put", {"key": "plain"})
    lose_commits(monkeypatch, ran=True)  # with an idempotency key, as over the websocket
    keyed = await runtime.call("mutation", "marks:put", {"key": "keyed"}, idempotency_key=("session", 1))
    resent = await runtime.call("mutation", "marks:put", {"key": "keyed"}, idempotency_key=("session", 1))
    assert await marks_of(runtime) == {"plain": [outcome.value], "keyed": [keyed.value]}
    assert resent.value == keyed.value and keyed.ts is not None and resent.ts is not None and resent.ts >= keyed.ts
    assert runtime.metrics.value("ripple_commit_resolutions_total", outcome="committed") == 2
    assert runtime.metrics.value("ripple_connection_retries_total") == 0


async def test_a_commit_that_never_arrived_runs_again_once(proxied: tuple[Runtime, FaultProxy],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, _ = proxied
    lose_commits(monkeypatch, ran=False)
    outcome = await runtime.call("mutation", "marks:put", {"key": "again"})
    assert await marks_of(runtime) == {"again": [outcome.value]}
    assert runtime.metrics.value("ripple_commit_resolutions_total", outcome="not_committed") == 1
    assert runtime.metrics.value("ripple_connection_retries_total") == 1


async def test_a_query_whose_answer_is_lost_runs_again(proxied: tuple[Runtime, FaultProxy]) -> None:
    runtime, proxy = proxied
    written = await runtime.call("mutation", "marks:put", {"key": "read me"})
    proxy.cut(drop="to_client", hold=0.3)  # the query's answer never comes; then the connection breaks
    assert (await runtime.call("query", "marks:ids", {"key": "read me"})).value == [written.value]
    assert runtime.metrics.value("ripple_connection_retries_total") >= 1


async def test_with_the_database_gone_clients_hear_not_committed_or_unknown_never_failed(
    proxied: tuple[Runtime, FaultProxy], monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, proxy = proxied
    proxy.refuse(True)
    proxy.cut()
    app = build_app(runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ripple") as client:  # type: ignore[arg-type]
        response = await client.post("/api/mutation", json={"path": "marks:put", "args": {"key": "down"}})
    assert response.status_code == 503 and response.json()["code"] == "DatabaseUnavailable", response.text
    assert "did not commit" in response.json()["message"]
    proxy.refuse(False)
    assert await marks_of(runtime) == {}

    def database_goes_away() -> None:
        proxy.refuse(True)
        proxy.cut()

    lose_commits(monkeypatch, ran=True, then=database_goes_away)
    with pytest.raises(DatabaseUnavailable) as unknown:
        await runtime.call("mutation", "marks:put", {"key": "in doubt"})
    assert unknown.value.committed is None and unknown.value.code == "MutationOutcomeUnknown"
    assert UNKNOWN in unknown.value.message
    proxy.refuse(False)
    assert list(await marks_of(runtime)) == ["in doubt"]  # it had committed: "unknown" was the truth
    assert runtime.metrics.value("ripple_commit_resolutions_total", outcome="unknown") == 1


async def test_a_backend_ended_while_idle_fails_as_a_lost_connection_and_is_never_reused(
    proxied: tuple[Runtime, FaultProxy],
) -> None:
    """pg_terminate_backend on a connection idle in a transaction: its next statement fails with
    "cannot switch to state 15; another operation (2) is in progress" (asyncpg read PostgreSQL's
    FATAL message as a protocol error, MagicStack/asyncpg#1069) or as closed, depending on
    timing. Either way it is a lost connection; rollback() neither raises nor hides it; the
    connection is closed and the pool hands out a fresh one."""
    runtime, _ = proxied
    with pytest.raises(Exception) as lost:  # which one depends on timing, see above
        async with runtime.db.acquire() as conn:
            await conn.execute("BEGIN")
            pid = conn.get_server_pid()
            async with runtime.db.acquire() as other:
                await other.execute("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(0.05)
            try:
                await conn.execute("SELECT 1")
            finally:
                await rollback(conn)
    assert connection_failure(lost.value), repr(lost.value)
    assert "rollback" not in [frame.name for frame in traceback.extract_tb(lost.value.__traceback__)]
    async with runtime.db.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1 and conn.get_server_pid() != pid


def test_what_counts_as_a_lost_connection() -> None:
    from asyncpg.exceptions._base import DataError as EncodingError

    lost = [OSError(), ConnectionResetError(), asyncpg.ConnectionDoesNotExistError(""), asyncpg.AdminShutdownError(""),
            asyncpg.InterfaceError("connection has been released back to the pool"),
            asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")]
    kept = [asyncpg.SerializationError(""), asyncpg.UniqueViolationError(""), asyncpg.QueryCanceledError(""),
            EncodingError("invalid input for query argument"), ValueError(), RuntimeError()]
    assert all(connection_failure(e) for e in lost) and not any(connection_failure(e) for e in kept)


# -- end to end ------------------------------------------------------------------------------------

@pytest.fixture
async def faulty(start_server: Callable[..., ServerProcess], namespace: str, pg_url: str) -> AsyncIterator[Faulty]:
    """`ripple serve` on the faults app, its database reached through a FaultProxy."""
    proxy = FaultProxy(backend_of(pg_url)).start()
    admin = await asyncpg.create_pool(pg_url, min_size=1, max_size=3)
    server: ServerProcess | None = None
    try:
        server = start_server("serve", app_dir=FAULTS_APP, extra_env={
            "DATABASE_URL": through(pg_url, proxy.port), "RIPPLE_SCHEDULER_POLL_SECONDS": "1"})
        yield Faulty(server, proxy, admin, namespace)
        log = server.log()
        # No call failed with an internal error, no rollback hid an error by failing itself, no
        # connection went back to the pool inside a transaction. (A pooled connection whose
        # backend was ended while idle still fails its next statement with "cannot switch to
        # state N": asyncpg's; that attempt is run again, logged as a WARNING.)
        for symptom in ("ERROR ripple.errors", "released back to the pool", "Resetting connection with an active transaction"):
            assert symptom not in log, f"{symptom!r} in the server log:\n{log[-4000:]}"
    finally:
        await admin.close()
        if server is not None:
            server.stop()  # its connections end first: the proxy then has nothing in flight
        proxy.stop()


class Chaos:
    """Faults at random moments, from a seeded rng, until stopped. `wanted`: what the server's
    figures (Faulty.metrics) must also show before the work may end."""

    def __init__(self, faulty: Faulty, seed: int, wanted: Callable[[dict[str, int]], bool] | None = None) -> None:
        self.faulty = faulty
        self.rng = random.Random(seed)
        self.wanted = wanted
        self.seen_wanted = wanted is None
        self.done: collections.Counter[str] = collections.Counter()
        self.faults: dict[str, tuple[int, Callable[[], Awaitable[None]]]] = {
            "cut all": (2, lambda: self._cut(None, rst=True)),
            "cut one": (2, lambda: self._cut(1, rst=False)),
            "lose replies": (4, lambda: self._cut(self.rng.randint(1, 4), drop="to_client")),
            "lose requests": (2, lambda: self._cut(self.rng.randint(1, 4), drop="to_server")),
            "terminate all": (2, lambda: self._terminate(None)),
            "terminate one": (3, lambda: self._terminate(1)),
            "pause": (1, self._pause),
            "slow": (1, self._slow),
        }

    @property
    def enough(self) -> bool:
        """At least MIN_FAULTS faults have struck, and the server's figures showed `wanted`."""
        return sum(self.done.values()) >= MIN_FAULTS and self.seen_wanted

    def keys(self, prefix: str, least: int) -> Iterator[str]:
        """`prefix-0`, `prefix-1`, ...: at least `least` of them, then more until enough faults
        have struck. One iterator may feed several clients (each key goes to one of them)."""
        for i in itertools.count():
            if i >= least and self.enough:
                return
            yield f"{prefix}-{i}"

    async def run(self, stop: asyncio.Event) -> None:
        names = list(self.faults)
        weights = [self.faults[n][0] for n in names]
        while not stop.is_set():
            await asyncio.sleep(self.rng.uniform(0.05, 0.2))
            name = self.rng.choices(names, weights)[0]
            await self.faults[name][1]()
            self.done[name] += 1
            if self.wanted is not None and not self.seen_wanted and sum(self.done.values()) >= MIN_FAULTS:
                self.seen_wanted = self.wanted(await asyncio.to_thread(self.faulty.metrics))

    async def _cut(self, count: int | None, rst: bool = True, drop: Any = None) -> None:
        hold = self.rng.uniform(0.02, 0.2) if drop else 0.0
        self.faulty.proxy.cut(count=count, rng=self.rng, rst=rst, drop=drop, hold=hold)

    async def _terminate(self, count: int | None) -> None:
        pids = sorted(r["pid"] for r in await self.faulty.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[]) OR application_name = $2",
            self.faulty.proxy.backend_ports(), f"ripple {self.faulty.namespace}"[:63]))
        chosen = pids if count is None else self.rng.sample(pids, min(count, len(pids)))
        await self.faulty.admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", chosen)

    async def _pause(self) -> None:
        self.faulty.proxy.pause()
        await asyncio.sleep(self.rng.uniform(0.05, 0.4))
        self.faulty.proxy.resume()

    async def _slow(self) -> None:
        self.faulty.proxy.slow(self.rng.uniform(0.001, 0.01))
        await asyncio.sleep(self.rng.uniform(0.1, 0.5))
        self.faulty.proxy.slow(0)


def answers_lost(figures: dict[str, int]) -> bool:
    """The answer of at least one COMMIT was lost, and the server found that it had committed."""
    return figures.get('commit_resolutions_total{outcome="committed"}', 0) > 0


async def under_chaos(faulty: Faulty, seed: int, work: Callable[[Chaos], Iterable[Awaitable[None]]],
                      wanted: Callable[[dict[str, int]], bool] | None = None) -> collections.Counter[str]:
    """Run `work(chaos)` while the Chaos strikes; then let the connections heal. The work takes
    its keys from `chaos.keys`, so it goes on until enough faults have struck (and the server's
    figures show `wanted`)."""
    chaos, stop = Chaos(faulty, seed, wanted), asyncio.Event()
    striker = asyncio.create_task(chaos.run(stop))
    try:
        await asyncio.wait_for(asyncio.gather(*work(chaos)), 240)
    finally:
        stop.set()
        await striker
    assert chaos.enough, chaos.done  # the faults really happened meanwhile
    print(f"faults: {dict(chaos.done)}")
    return chaos.done


# -- HTTP ------------------------------------------------------------------------------------------

def outcome_of_http(response: httpx.Response) -> Outcome:
    body = response.json()
    if response.status_code == 200 and body.get("status") == "success":
        return Outcome(True, body["value"])
    message = body.get("errorMessage") or body.get("message") or ""
    if body.get("code") == "MutationOutcomeUnknown" or UNKNOWN in message:
        return Outcome(None, message=message)
    return Outcome(False, message=f"{response.status_code} {message}")


async def http_mutations(url: str, ledger: Ledger, keys: Iterator[str], path: str = "marks:put") -> None:
    """One closed-loop HTTP client: the next mutation once the previous one was answered."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for key in keys:
            ledger.sent.add(key)
            response = await client.post("/api/mutation", json={"path": path, "args": {"key": key}})
            ledger.record(key, outcome_of_http(response))


@pytest.mark.e2e
async def test_http_mutations_report_the_truth_when_the_database_connection_is_lost(faulty: Faulty) -> None:
    ledger = Ledger()

    def work(chaos: Chaos) -> list[Awaitable[None]]:
        keys = chaos.keys("http", 300)  # shared: each client takes the next key
        return [http_mutations(faulty.server.url, ledger, keys) for _ in range(12)]

    await under_chaos(faulty, SEED, work, wanted=answers_lost)
    figures = await faulty.check(ledger)
    assert answers_lost(figures), figures


# -- websocket -------------------------------------------------------------------------------------

class SyncClient:
    """A raw client of the sync protocol that behaves like the official ones across reconnects:
    one session id, request ids in order, unanswered mutations resent on each new connection."""

    def __init__(self, url: str, ledger: Ledger, keys: Iterator[str], rng: random.Random, window: int = 6) -> None:
        self.url = url.replace("http://", "ws://") + "/api/sync"
        self.ledger, self.rng, self.window = ledger, rng, window
        self.session = str(uuid.uuid4())
        self.keys = keys
        self.all_sent = False  # `keys` has run out
        self.unanswered: dict[int, str] = {}  # request id -> key, in the order sent
        self.next_id = 0
        self.connections = 0

    async def run(self) -> None:
        while not self.all_sent or self.unanswered:
            async with connect(self.url, max_size=None) as ws:
                await self._session(ws)

    async def _session(self, ws: ClientConnection) -> None:
        await ws.send(json.dumps({"type": "Connect", "sessionId": self.session, "connectionCount": self.connections,
                                  "lastCloseReason": "InitialConnect" if not self.connections else "fault test"}))
        self.connections += 1
        for request_id, key in self.unanswered.items():
            await self._send_mutation(ws, request_id, key)
        answers_before_drop = self.rng.randint(5, 80)  # then vanish without a close frame
        try:
            while not self.all_sent or self.unanswered:
                while not self.all_sent and len(self.unanswered) < self.window:
                    key = next(self.keys, None)
                    if key is None:
                        self.all_sent = True
                        break
                    self.unanswered[self.next_id] = key
                    self.ledger.sent.add(key)
                    await self._send_mutation(ws, self.next_id, key)
                    self.next_id += 1
                if not self.unanswered:
                    return
                message = json.loads(await ws.recv())
                if message["type"] != "MutationResponse":
                    continue
                key = self.unanswered.pop(message["requestId"])
                if message["success"]:
                    self.ledger.record(key, Outcome(True, message["result"]))
                else:
                    text = str(message["result"])
                    self.ledger.record(key, Outcome(None if UNKNOWN in text else False, message=text))
                answers_before_drop -= 1
                if answers_before_drop == 0:
                    ws.transport.abort()
                    return
        except ConnectionClosed:
            return

    async def _send_mutation(self, ws: ClientConnection, request_id: int, key: str) -> None:
        await ws.send(json.dumps({"type": "Mutation", "requestId": request_id, "udfPath": "marks:put",
                                  "args": [{"key": key}]}))


@pytest.mark.e2e
async def test_websocket_mutations_report_the_truth_and_resends_never_duplicate(faulty: Faulty) -> None:
    ledger = Ledger()
    rng = random.Random(SEED + 1)
    clients: list[SyncClient] = []

    def work(chaos: Chaos) -> list[Awaitable[None]]:
        clients.extend(SyncClient(faulty.server.url, ledger, chaos.keys(f"ws{c}", 100), random.Random(rng.random()))
                       for c in range(8))
        return [c.run() for c in clients]

    await under_chaos(faulty, SEED + 2, work, wanted=answers_lost)
    assert sum(c.connections for c in clients) > 2 * len(clients)  # they did reconnect and resend
    figures = await faulty.check(ledger)
    assert answers_lost(figures), figures


# -- scheduled mutations ---------------------------------------------------------------------------

@pytest.mark.e2e
async def test_scheduled_mutations_run_once_each_when_the_database_connection_is_lost(faulty: Faulty) -> None:
    """Each `put_later` call schedules 15 `put` jobs. A call reported committed must have all
    its jobs run exactly once; the jobs run while the chaos goes on."""
    calls = Ledger()
    scheduling = 2  # clients still scheduling

    async def schedule(batches: Iterator[str]) -> None:
        nonlocal scheduling
        async with httpx.AsyncClient(base_url=faulty.server.url, timeout=120) as client:
            for batch in batches:
                calls.sent.add(batch)
                args = {"keys": [f"{batch}/{j}" for j in range(15)]}
                response = await client.post("/api/mutation", json={"path": "marks:put_later", "args": args})
                calls.record(batch, outcome_of_http(response))
                await asyncio.sleep(0.2)
        scheduling -= 1

    async def drained() -> None:
        while True:  # polls the table: the jobs' states are the truth
            await asyncio.sleep(0.2)
            if not scheduling and not await faulty.admin.fetchval(
                    f"""SELECT count(*) FROM "{faulty.namespace}"._scheduled_functions
                        WHERE doc->'state'->>'kind' IN ('pending', 'inProgress')"""):
                return

    def work(chaos: Chaos) -> list[Awaitable[None]]:
        batches = chaos.keys("batch", 20)
        return [schedule(batches), schedule(batches), drained()]

    await under_chaos(faulty, SEED + 3, work)
    assert len(calls.sent) >= 20 and calls.counts() == {"committed": len(calls.sent)}, [
        o.message for o in calls.outcomes.values() if not o.committed][:3]
    jobs = await faulty.admin.fetch(f'SELECT doc->\'state\'->>\'kind\' AS state FROM "{faulty.namespace}"._scheduled_functions')
    assert collections.Counter(row["state"] for row in jobs) == {"success": 15 * len(calls.sent)}
    marks = await faulty.marks()
    assert sorted(marks) == sorted(f"{batch}/{j}" for batch in calls.sent for j in range(15))
    assert {len(ids) for ids in marks.values()} == {1}, {k: v for k, v in marks.items() if len(v) > 1}
    print(f"scheduled: {faulty.metrics()}")


async def test_the_proxy_forwards_pauses_and_cuts(pg_url: str) -> None:
    """The tool itself: traffic through it works, a pause holds it, a cut ends connections."""
    proxy = FaultProxy(backend_of(pg_url)).start()
    try:
        conn = await asyncpg.connect(through(pg_url, proxy.port))
        assert await conn.fetchval("SELECT 41 + 1") == 42
        proxy.pause()
        pending = asyncio.ensure_future(conn.fetchval("SELECT 1"))
        await asyncio.sleep(0.2)
        assert not pending.done()
        proxy.resume()
        assert await pending == 1
        assert proxy.cut() == 1
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
        conn.terminate()
    finally:
        proxy.stop()
