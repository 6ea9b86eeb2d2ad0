"""Live queries: shared query executions kept valid as commits land.

One `SubscriptionManager` per process. Identical subscriptions (function, arguments, identity,
pagination journal) share one `SharedQuery`: one execution, one serialized result.

The manager advances in *ticks*. A tick opens one read-only snapshot, reads the change log past
what it processed (those rows are exactly the commits visible in the snapshot, because a commit
writes its log row atomically with its data), re-runs in that same snapshot every shared query
whose read set overlaps a logged write (and every new one), then publishes all new results at
once together with the snapshot's timestamp. So after each tick every result is valid at one
ts, and every client's Transition is a consistent state. Queries the commits did not touch are
not re-run: their results stay valid at the new ts.

Ticks are woken by the commit listener (NOTIFY), by new subscriptions, by local mutations, and
by a poll timer (fast when the listener is down).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from server.core import sql
from server.core.backoff import reconnect_delays
from server.core.contexts import Identity
from server.core.listener import Listener
from server.core.readsets import ReadIndex
from server.core.registry import FunctionDef
from server.core.runtime import QueryRun, Runtime
from server.core.supervise import Supervised
from server.core.transaction import ReadRange
from server.core.values import from_client_json, to_convex_json
from server.errors import RippleUsageError
from server.wire import QueryResult

log = logging.getLogger("ripple.subscriptions")

MAX_COMMITS_PER_TICK = 5_000
POLL_WHEN_LISTENING = 5.0
POLL_WHEN_DOWN = 0.5
PRUNE_EVERY = 60.0
COMMIT_LOG_RETENTION_S = 3600.0
MUTATION_RESULT_RETENTION_S = 86_400.0


class Subscriber(Protocol):
    def notify(self) -> None: ...


def query_result(run: QueryRun) -> QueryResult:
    """A query run as clients receive it; the value is serialized once for every subscriber."""
    if run.failure is None:
        return QueryResult.success(orjson.dumps(to_convex_json(run.value)), run.log_lines, run.journal)
    failure = run.failure
    return QueryResult.failed(failure.message, failure.log_lines, run.journal, failure.data, failure.has_data)


SubKey = tuple[str, bytes, bytes, str | None]


@dataclass(eq=False)
class SharedQuery:
    key: SubKey
    path: str
    args: Any  # decoded argument object
    identity: Identity | None
    journal: str | None
    subscribers: set[Subscriber] = field(default_factory=set)
    reads: list[ReadRange] = field(default_factory=list)
    result: QueryResult | None = None


def subscription_key(path: str, args_json: Any, identity: Identity | None, journal: str | None) -> SubKey:
    try:
        args_key = orjson.dumps(args_json, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: the query's run will refuse it
        args_key = json.dumps(args_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    identity_key = orjson.dumps(dict(identity), option=orjson.OPT_SORT_KEYS) if identity is not None else b""
    return (path, args_key, identity_key, journal)


class SubscriptionManager:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.queries: dict[SubKey, SharedQuery] = {}
        self._reads: ReadIndex[SharedQuery] = ReadIndex()  # read sets of live shared queries
        # Shared queries to run at the next tick whatever was written (new ones, and all after
        # a reload); their results, if any, are not valid at current_ts.
        self.stale: set[SharedQuery] = set()
        self.current_ts = 0  # every non-stale result is valid at this ts
        self._processed_ts = 0
        self._wake = asyncio.Event()
        self._ticker: Supervised | None = None  # runs _loop
        self._listener: Listener | None = None
        self._ts_waiters: set[Subscriber] = set()
        self.encode_cache: dict[Any, Any] = {}
        self._last_prune = 0.0
        self._stopping = False
        runtime.on_reload.append(self._functions_reloaded)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._processed_ts = self.current_ts = await self.runtime.latest_ts()
        db = self.runtime.db
        self._listener = Listener(db.url, db.channel, self._notified, {"search_path": db.search_path}, self.runtime.loops)
        self._listener.start()
        self._ticker = self.runtime.supervise("live-queries", self._loop)
        self._ticker.start()

    async def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            await self._listener.stop()
        if self._ticker is not None:
            await self._ticker.stop()

    @property
    def listener(self) -> Listener | None:
        return self._listener

    def trigger(self) -> None:
        self._wake.set()

    def _notified(self, payload: str | None) -> None:
        self._wake.set()  # a commit (or the listener's state changed): look at the change log

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, path: str, args_json: Any, identity: Identity | None, journal: str | None, subscriber: Subscriber) -> SharedQuery:
        try:
            canonical = self.runtime.app.registry.path_of(path)
        except RippleUsageError:
            canonical = path
        key = subscription_key(canonical, args_json, identity, journal)
        sq = self.queries.get(key)
        if sq is None:
            sq = SharedQuery(key, canonical, args_json, identity, journal)
            self.queries[key] = sq
            self.stale.add(sq)
            self.trigger()
        sq.subscribers.add(subscriber)
        return sq

    def unsubscribe(self, sq: SharedQuery, subscriber: Subscriber) -> None:
        sq.subscribers.discard(subscriber)
        if not sq.subscribers and self.queries.get(sq.key) is sq:
            del self.queries[sq.key]
            self._reads.discard(sq)
            self.stale.discard(sq)

    def wait_for_ts(self, subscriber: Subscriber) -> None:
        """Wake `subscriber` after the next tick (it awaits a mutation's ts)."""
        self._ts_waiters.add(subscriber)
        self.trigger()

    @property
    def subscription_count(self) -> int:
        return sum(len(sq.subscribers) for sq in self.queries.values())

    def _functions_reloaded(self) -> None:
        self.stale.update(self.queries.values())
        self.trigger()

    # -- the tick loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        delays = reconnect_delays(first=0.05, cap=2.0)
        self.trigger()  # (re)started: catch up at once
        while not self._stopping:
            listening = self._listener is not None and self._listener.healthy
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_WHEN_LISTENING if listening else POLL_WHEN_DOWN)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._tick()
                await self._maybe_prune()
                delays = reconnect_delays(first=0.05, cap=2.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live-query tick failed; retrying")
                await asyncio.sleep(next(delays))
                self.trigger()

    async def _tick(self) -> None:
        runtime = self.runtime
        new_results: list[tuple[SharedQuery, QueryRun | QueryResult]] = []
        async with runtime.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(sql.COMMITS_AFTER, self._processed_ts, MAX_COMMITS_PER_TICK + 1)
            pruned_through = await conn.fetchval(sql.PRUNED_THROUGH)
            everything = len(rows) > MAX_COMMITS_PER_TICK or (
                pruned_through is not None and self._processed_ts < int(pruned_through)
            )
            if everything:  # too much to compare: re-run all at the snapshot's ts
                snapshot_ts = int(await conn.fetchval(sql.LATEST_TS))
            else:
                snapshot_ts = int(rows[-1]["ts"]) if rows else self._processed_ts
            to_run: set[SharedQuery] = set(self.stale)
            if everything:
                to_run.update(self.queries.values())
            elif rows:  # only live queries are filed in the index: unsubscribe removes them
                to_run.update(self._reads.touched_by(w for r in rows for w in r["writes"]))
            for sq in to_run:
                outcome = await self._execute(conn, sq)
                new_results.append((sq, outcome))
                if isinstance(outcome, QueryRun) and outcome.broken:
                    raise RuntimeError(f"snapshot transaction broke while running {sq.path}; the tick is retried")
        # Publish everything at once: no client can observe a half-applied tick.
        changed: set[Subscriber] = set()
        for sq, outcome in new_results:
            if isinstance(outcome, QueryRun):
                result = query_result(outcome)
                sq.reads = outcome.reads
            else:
                result = outcome
                sq.reads = []
            if result.journal is not None and result.journal != sq.journal:
                pinned: SubKey = (*sq.key[:3], result.journal)
                if self.queries.get(sq.key) is sq and pinned not in self.queries:
                    # A first page is now pinned to where it ended; a later subscriber asking
                    # for a first page gets its own execution.
                    del self.queries[sq.key]
                    sq.key = pinned
                    self.queries[pinned] = sq
                sq.journal = result.journal
            if sq.result is None or sq.result.digest != result.digest:
                changed |= sq.subscribers
            sq.result = result
            self.stale.discard(sq)
            if self.queries.get(sq.key) is sq:  # still subscribed after the tick's awaits
                self._reads.put(sq, sq.reads)
        self._processed_ts = snapshot_ts
        self.current_ts = max(self.current_ts, snapshot_ts)
        self.encode_cache = {}  # Transitions shared by clients in the same state, this publish only
        waiters, self._ts_waiters = self._ts_waiters, set()
        for subscriber in changed | waiters:
            subscriber.notify()

    async def _execute(self, conn: Any, sq: SharedQuery) -> QueryRun | QueryResult:
        runtime = self.runtime
        try:
            fn: FunctionDef = runtime.app.registry.resolve(sq.path, kind="query", allow_internal=False)
            kwargs = fn.validate_args(from_client_json(sq.args, path="args"))  # a client's, within its limits
        except RippleUsageError as exc:
            return QueryResult.failed(str(exc), [], sq.journal)
        return await runtime.execute_query(conn, fn, kwargs, sq.identity, sq.journal)

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        cutoff_ns = int((time.time() - COMMIT_LOG_RETENTION_S) * 1e9)
        async with self.runtime.db.acquire() as conn:
            await conn.execute(sql.PRUNE_COMMITS, cutoff_ns)
            await conn.execute(sql.PRUNE_MUTATION_RESULTS, MUTATION_RESULT_RETENTION_S)
