"""Live queries: shared query executions kept valid as commits land.

One `SubscriptionManager` per process. Identical subscriptions (function, arguments, identity,
pagination journal) share one `SharedQuery`: one execution, one serialized result.

The manager advances in *ticks*. A tick opens one read-only snapshot, reads the change log past
what it processed (exactly the commits visible in the snapshot: a commit writes its log row with
its data), runs in that snapshot the shared queries a logged write touched (and new ones), then
publishes their results at once with the snapshot's ts: every client's Transition is a
consistent state. Queries no commit touched keep their results, valid at the new ts.

Fairness: a tick runs its queries one subscriber at a time in turn (round robin), each with a
slice of LIVE_SLICE seconds, the whole tick with TICK_BUDGET, over up to K connections sharing its
snapshot (tick_runs.py); what it did not reach waits for the next tick. A run still going after
its slice takes its connection's snapshot over and finishes *apart*; a query known to be slow runs apart from the start, in a snapshot of its own (at most
MAX_APART at a time). A result from apart is valid at its snapshot's ts; a tick publishes it only
if no commit since wrote into what it read (else it runs again). While a query is being
computed its subscribers get no Transition (their queries move together); everyone else's do.
A query that timed out is not run again on every write: it rests REST_FIRST seconds, doubling
up to REST_MAX while it keeps timing out, its timeout error standing meanwhile.

Ticks wake on commits (NOTIFY), subscriptions, local mutations, runs apart and a poll timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from server.core import log_stream, sql
from server.core.backoff import reconnect_delays
from server.core.commit import prune_commit_records
from server.core.contexts import Identity
from server.core.database import Snapshot, connection_failure
from server.core.listener import Listener
from server.core.readsets import ReadIndex, check_unchanged_since
from server.core.runtime import QueryRun, Runtime
from server.core.shared_queries import (
    FinishedApart,
    SharedQuery,
    SubKey,
    Subscriber,
    prepare,
    query_result,
    run_arguments,
    subscription_key,
)
from server.core.supervise import Supervised
from server.core.tick_runs import LIVE_SLICE, run_in_tick
from server.errors import FunctionTimedOut, RippleUsageError, StaleTimestamp
from server.wire import QueryResult

log = logging.getLogger("ripple.subscriptions")

MAX_COMMITS_PER_TICK = 5_000
MAX_APART = 4  # runs finishing apart at once (each holds a pooled connection)
REST_FIRST, REST_MAX = 2.0, 60.0  # a query that timed out rests this long, doubling while it keeps timing out
POLL_WHEN_LISTENING, POLL_WHEN_DOWN = 5.0, 0.5
PRUNE_EVERY = 60.0


class SubscriptionManager:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.queries: dict[SubKey, SharedQuery] = {}
        self._reads: ReadIndex[SharedQuery] = ReadIndex()  # read sets of live shared queries
        # Shared queries whose results, if any, are not valid at current_ts: to run whatever was
        # written (new ones, all after a reload, those a tick did not reach) or being run apart.
        self.stale: set[SharedQuery] = set()
        self._apart: dict[SharedQuery, asyncio.Task[None]] = {}  # runs finishing apart
        self._finished: list[FinishedApart] = []  # ... and those that finished
        self._generation = 0  # of the app's functions: +1 on every reload
        self._resting: set[SharedQuery] = set()  # touched while resting after a timeout
        self._wake_handle: asyncio.TimerHandle | None = None
        self.current_ts = 0  # every non-stale result is valid at this ts
        self._processed_ts = 0
        self._wake = asyncio.Event()
        self._ticker: Supervised | None = None  # runs _loop
        self._listener: Listener | None = None
        self._ts_waiters: set[Subscriber] = set()
        self.encode_cache: dict[Any, Any] = {}
        self._last_prune, self._stopping = 0.0, False
        runtime.on_reload.append(self._functions_reloaded)
        runtime.query_cache.wake = self.trigger  # it waits for ticks to have read the latest commits

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._processed_ts = self.current_ts = await self.runtime.latest_ts()
        self.runtime.query_cache.follow(self._processed_ts)
        db = self.runtime.db
        self._listener = Listener(db.url, db.channel, self._notified, {"search_path": db.search_path}, self.runtime.loops)
        self._listener.start()
        self._ticker = self.runtime.supervise("live-queries", self._loop)
        self._ticker.start()

    async def stop(self) -> None:
        self._stopping = True
        self.runtime.query_cache.unfollow()
        if self._listener is not None:
            await self._listener.stop()
        if self._ticker is not None:
            await self._ticker.stop()
        for task in list(self._apart.values()):
            task.cancel()
        if self._apart:
            await asyncio.gather(*self._apart.values(), return_exceptions=True)

    @property
    def listener(self) -> Listener | None:
        return self._listener

    def trigger(self) -> None:
        self._wake.set()

    def _notified(self, payload: str | None) -> None:
        self._wake.set()  # a commit (or the listener's state changed): look at the change log

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, path: str, args_json: Any, identity: Identity | None, journal: str | None, subscriber: Subscriber,
                  *, admin: bool = False) -> SharedQuery:
        """`admin`: the subscriber holds the admin key, and may subscribe to internal queries."""
        try:
            canonical = self.runtime.app.registry.path_of(path)
        except RippleUsageError:
            canonical = path
        key = subscription_key(canonical, args_json, identity, journal, admin)
        sq = self.queries.get(key)
        if sq is None:
            sq = SharedQuery(key, canonical, args_json, identity, journal, admin)
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
            self._resting.discard(sq)
            apart = self._apart.get(sq)
            if apart is not None:
                apart.cancel()

    def wait_for_ts(self, subscriber: Subscriber) -> None:
        """Wake `subscriber` after the next tick (it awaits a mutation's ts)."""
        self._ts_waiters.add(subscriber)
        self.trigger()

    @property
    def subscription_count(self) -> int:
        return sum(len(sq.subscribers) for sq in self.queries.values())

    def _functions_reloaded(self) -> None:
        self._generation += 1  # what runs apart now ran the old code: it will not be published
        for sq in self.queries.values():
            sq.ran(False, 0.0, REST_FIRST, REST_MAX)  # new code: no rest
        self._resting.clear()
        self.stale.update(self.queries.values())
        self.trigger()

    # -- the tick loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        log_stream.caller.set("live")  # the log stream's caller of what this task runs, and its runs apart
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
            except Exception as exc:
                if connection_failure(exc):  # expected when PostgreSQL restarts: no traceback
                    log.warning("live-query tick lost its database connection (%s: %s); retrying", type(exc).__name__, exc)
                else:
                    log.exception("live-query tick failed; retrying")
                await asyncio.sleep(next(delays))
                self.trigger()

    async def _tick(self) -> None:
        runtime = self.runtime
        new_results: list[tuple[SharedQuery, QueryRun | QueryResult]] = []
        finished, self._finished = self._finished, []
        self.stale.update(self._not_resting(set(self._resting)))
        snapshot = await runtime.db.snapshot()
        try:
            conn = snapshot.conn
            rows = await conn.fetch(sql.COMMITS_AFTER, self._processed_ts, MAX_COMMITS_PER_TICK + 1)
            pruned_through = await conn.fetchval(sql.PRUNED_THROUGH)
            everything = len(rows) > MAX_COMMITS_PER_TICK or (
                pruned_through is not None and self._processed_ts < int(pruned_through)
            )
            if everything:  # too much to compare: re-run all at the snapshot's ts
                snapshot_ts = int(await conn.fetchval(sql.LATEST_TS))
                self.stale.update(self.queries.values())
            else:
                snapshot_ts = int(rows[-1]["ts"]) if rows else self._processed_ts
            await runtime.commits_seen(conn, snapshot_ts, None if everything else rows)  # before any re-run
            runtime.query_cache.advance(snapshot_ts, None if everything else rows)  # after the env's copy moved
            if rows and not everything:  # only live queries are filed in the index: unsubscribe removes them
                self.stale.update(self._not_resting(self._reads.touched_by(w for r in rows for w in r["writes"])))
            for done in finished:
                if await self._still_valid(conn, done, snapshot_ts):
                    new_results.append((done.sq, done.outcome))  # type: ignore[arg-type]
            busy = {sq for sq, _ in new_results} | {done.sq for done in self._finished} | self._apart.keys()
            to_run = list(self._not_resting({sq for sq in self.stale if sq not in busy}))  # resting: stay stale
            slow = [sq for sq in to_run if sq.slow]
            for sq in slow:
                if len(self._apart) >= MAX_APART:
                    break
                self.run_apart(sq, snapshot=None, started=None)
            await run_in_tick(self, snapshot, [sq for sq in to_run if not sq.slow], snapshot_ts, new_results)
        finally:
            if not snapshot.handed_over:
                await snapshot.close()
        self._publish(new_results, snapshot_ts)

    def _not_resting(self, queries: set[SharedQuery]) -> set[SharedQuery]:
        """Those of `queries` to run now; the others rest after a timeout until a tick woken then."""
        now = asyncio.get_running_loop().time()
        resting = {sq for sq in queries if sq.rest_until > now}
        for sq in resting:
            self._wake_at(sq.rest_until)
        self._resting = (self._resting | resting) - (queries - resting)
        return queries - resting

    def note_run(self, sq: SharedQuery, outcome: QueryRun | QueryResult | None) -> None:
        failure = outcome.failure if isinstance(outcome, QueryRun) else None
        timed_out = isinstance(failure and failure.__cause__, FunctionTimedOut)
        now = asyncio.get_running_loop().time() if timed_out else 0.0  # only then: it asks getpid(), a system call
        if sq.ran(timed_out, now, REST_FIRST, REST_MAX):
            self.runtime.metrics.inc("ripple_live_query_rests_total")  # rests even if the result goes unpublished

    def _wake_at(self, when: float) -> None:
        loop, handle = asyncio.get_running_loop(), self._wake_handle  # (an extra wake-up is harmless)
        if handle is None or handle.cancelled() or not loop.time() < handle.when() <= when:
            self._wake_handle = loop.call_at(when, self.trigger)

    def run_apart(self, sq: SharedQuery, snapshot: Snapshot | None, started: tuple[asyncio.Future[Any], int] | None) -> None:
        """Finish (`started`, in `snapshot`, which it then closes; None: the snapshot is another
        run's) or run (in a snapshot of its own) `sq` apart from the ticks; a tick picks the
        result up."""
        generation = self._generation
        self.runtime.metrics.inc("ripple_live_query_runs_apart_total")
        if snapshot is not None:
            snapshot.handed_over = True

        async def finish() -> None:
            loop = asyncio.get_running_loop()
            begun = loop.time()
            outcome: QueryRun | QueryResult | None = None
            ts = 0
            try:
                if started is not None:  # on a snapshot that `snapshot` holds, or another run of its batch
                    run, ts = started
                    try:
                        outcome = await run
                    finally:
                        if snapshot is not None:
                            await snapshot.close()
                else:
                    own = await self.runtime.db.snapshot()
                    try:
                        ts = int(await own.conn.fetchval(sql.LATEST_TS))
                        outcome = await self.execute(own.conn, sq)
                    finally:
                        await own.close()
                if isinstance(outcome, QueryRun) and outcome.broken:
                    outcome = None
                sq.slow = loop.time() - begun > LIVE_SLICE
                self.note_run(sq, outcome)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if connection_failure(exc):
                    log.warning("live query %s lost its database connection (%s); it runs again", sq.path, type(exc).__name__)
                else:
                    log.exception("running live query %s apart failed; it runs again", sq.path)
                outcome = None
                await asyncio.sleep(0.5)  # a failing database: do not spin
            finally:
                self._apart.pop(sq, None)
            self._finished.append(FinishedApart(sq, outcome, ts, generation))
            self.trigger()

        self._apart[sq] = asyncio.create_task(finish(), name=f"ripple-live-apart {sq.path}")

    async def _still_valid(self, conn: Any, done: FinishedApart, snapshot_ts: int) -> bool:
        """Is a result computed apart valid at the tick's `snapshot_ts`? (False: it runs again,
        or, computed at a ts this tick has not reached, waits for a later tick.)"""
        sq = done.sq
        if done.outcome is None or done.generation != self._generation or self.queries.get(sq.key) is not sq:
            return False  # failed, ran old code or no longer subscribed: (if subscribed) stale, runs again
        if done.ts > snapshot_ts:
            self._finished.append(done)
            return False
        reads = done.outcome.reads if isinstance(done.outcome, QueryRun) else []
        try:
            await check_unchanged_since(conn, reads, done.ts, snapshot_ts)
        except StaleTimestamp:
            return False
        return True

    def _publish(self, new_results: list[tuple[SharedQuery, QueryRun | QueryResult]], snapshot_ts: int) -> None:
        """Make a tick's results current at `snapshot_ts`, all at once: no client can observe a
        half-applied tick."""
        changed: set[Subscriber] = set()
        for sq, outcome in new_results:
            filed = sq.reads
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
            if self.queries.get(sq.key) is sq and (sq.reads != filed or sq not in self._reads):
                self._reads.put(sq, sq.reads)  # still subscribed after the tick's awaits, and it read elsewhere
        self._processed_ts = snapshot_ts
        self.current_ts = max(self.current_ts, snapshot_ts)
        self.encode_cache = {}  # Transitions shared by clients in the same state, this publish only
        waiters, self._ts_waiters = self._ts_waiters, set()
        for subscriber in changed | waiters:
            subscriber.notify()

    async def execute(self, conn: Any, sq: SharedQuery) -> QueryRun | QueryResult:
        runtime = self.runtime
        try:
            prepared = prepare(runtime, sq)
            kwargs = run_arguments(sq, prepared)
        except RippleUsageError as exc:
            return QueryResult.failed(str(exc), [], sq.journal)
        return await runtime.execute_query(conn, prepared.fn, kwargs, sq.identity, sq.journal)

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        await prune_commit_records(self.runtime.db)
