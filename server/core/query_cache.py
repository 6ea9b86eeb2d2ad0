"""The query result cache: a query's result computed for (function, arguments, identity) answers a
later call without touching PostgreSQL while no commit since wrote into what it read.

It is never stale because it answers only at a ts it knows everything about. The live-query
tick (subscriptions.py) reads every commit of the change log in ts order; `advance` drops the
entries a commit's writes touch (the same `ReadIndex` live queries use) and moves `applied_ts`.
A call at the latest ts first learns the latest committed ts (`Freshest`: one `SELECT max(ts)`
shared by every call that arrived while the previous one was in flight, so the cost of a hit
under load is a fraction of one round trip), waits up to WAIT_FOR_COMMITS for the tick to have
applied commits that far, and only then answers from an entry; otherwise it is a miss.

A miss runs the query and stores its result at `base`, the `applied_ts` before the run began:
the run's snapshot is at least that new, so commits after `base` can only make the entry
older, never newer. Commits in (base, applied_ts] applied while the query ran are checked
against its reads from `_recent` (the last RECENT_COMMITS commits' writes) before it is stored;
when `_recent` does not reach back to `base` the result is not stored. What is stored is bounded
by bytes (the value's wire encoding plus its keys and read ranges), least recently used first
out. docs/query-cache.md says what is cached and what is not.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from server.core.metrics import Metrics
from server.core.readsets import ReadIndex, overlaps
from server.core.transaction import ReadRange
from server.core.values import digest, from_convex_json, kept, to_convex_json

WAIT_FOR_COMMITS = 0.05  # seconds a call waits for the tick to apply commits it must know of
RECENT_COMMITS = 4096  # writes of the newest commits kept to check results stored after them
ENTRY_OVERHEAD = 200  # bytes of an entry besides its value's encoding, keys and read ranges

CacheKey = tuple[str, bytes, bytes]


@dataclass(slots=True)
class Cached:
    """A stored result: its value encoded (each hit decodes its own copy, which the caller may
    change: an action's ctx.run_query), what the client was shown, the lines of the run's log
    stream entry, what the run read, and its size counted against the cache's bytes."""

    key: CacheKey
    encoded: bytes
    log_lines: list[str]
    stream_lines: list[str]
    reads: list[ReadRange]
    size: int
    at: int | None  # the ts of the snapshot it ran in, when known (a live-query tick's run)
    serial: int = 0  # unique among this process's entries: what a copy encoded from it was made from

    def value(self) -> Any:
        return from_convex_json(orjson.loads(self.encoded))


def cache_key(path: str, args: Any, identity: Any) -> CacheKey:
    """(function, arguments, identity): equal for equal arguments whatever their keys' order.
    Arguments plain JSON can hold are hashed by their JSON, the others (bytes, integers beyond
    64 bits) by their Convex encoding; the prefixes keep the two apart."""
    try:
        args_key = b"j" + orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        args_key = b"d" + digest(args).encode()
    identity_key = kept(orjson.dumps(dict(identity), option=orjson.OPT_SORT_KEYS)) if identity is not None else b""
    return path, args_key, identity_key


class Freshest:
    """The latest committed ts, read after the caller asked for it. A caller that arrives while a
    read is in flight cannot use it (that read may predate a commit the caller already saw
    acknowledged), so it waits for the next one, which every caller arriving meanwhile shares:
    at most one read in flight and one queued, whatever the number of callers."""

    def __init__(self, read: Callable[[], Awaitable[int]]) -> None:
        self._read = read
        self._running: asyncio.Future[int] | None = None
        self._queued: asyncio.Future[int] | None = None

    async def get(self) -> int:
        if self._running is None:
            self._running = self._start()
            wanted = self._running
        else:
            if self._queued is None:
                self._queued = asyncio.get_running_loop().create_future()
            wanted = self._queued
        return await asyncio.shield(wanted)

    def _start(self) -> asyncio.Future[int]:
        task = asyncio.ensure_future(self._read())
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Future[int]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: its waiters get it
        self._running = None
        queued, self._queued = self._queued, None
        if queued is not None:
            self._running = self._start()
            self._running.add_done_callback(lambda done: _copy(done, queued))


def _copy(done: asyncio.Future[int], into: asyncio.Future[int]) -> None:
    if into.done():
        return
    if done.cancelled():
        into.cancel()
    elif (exc := done.exception()) is not None:
        into.set_exception(exc)
        into.exception()  # its waiters may all have left
    else:
        into.set_result(done.result())


class QueryCache:
    """Results by (function, arguments, identity), valid at `applied_ts` (see the module's
    docstring). `max_bytes` 0: off (nothing stored, every call a plain run)."""

    def __init__(self, max_bytes: int, metrics: Metrics, latest_ts: Callable[[], Awaitable[int]]) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.freshest = Freshest(latest_ts)
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, Cached] = OrderedDict()  # least recently used first
        self._reads: ReadIndex[CacheKey] = ReadIndex()
        # Every commit up to applied_ts has dropped what it touched; None: nobody follows the
        # change log (no live-query tick runs), so nothing can be known fresh.
        self.applied_ts: int | None = None
        self._recent: deque[tuple[int, list[dict[str, Any]]]] = deque()
        self._recent_from = 0  # _recent holds every commit in (_recent_from, applied_ts]
        self._generation = 0  # of the app's functions: a result of older code is not stored
        self._serial = 0  # of the latest entry stored
        self._advanced = asyncio.Event()
        self.wake: Callable[[], None] | None = None  # asks the live-query tick to read the change log
        metrics.gauge("ripple_query_cache_bytes", lambda: float(self.bytes))

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- following the change log (the live-query tick) ----------------------------------------

    def follow(self, ts: int) -> None:
        """The tick starts reading the change log after `ts`: nothing older is known."""
        self.clear()
        self.applied_ts = self._recent_from = ts
        self._recent.clear()

    def unfollow(self) -> None:
        self.applied_ts = None

    def advance(self, ts: int, commits: list[Any] | None) -> None:
        """Every commit up to `ts` is read: drop the entries `commits` (change-log rows after
        what was applied, in ts order) wrote into; None: too many to look at, drop everything."""
        if self.applied_ts is None:
            return
        if commits is None:
            self.clear()
            self._recent.clear()
            self._recent_from = ts
        else:
            fresh = [(int(row["ts"]), list(row["writes"])) for row in commits if int(row["ts"]) > self.applied_ts]
            if fresh and self._entries:
                for key in self._reads.touched_by(w for _, writes in fresh for w in writes):
                    self._drop(key)
                    self.metrics.inc("ripple_query_cache_invalidations_total")
            self._recent.extend(fresh)
            while len(self._recent) > RECENT_COMMITS:
                self._recent_from = self._recent.popleft()[0]
        self.applied_ts = max(self.applied_ts, ts)
        self._advanced.set()
        self._advanced = asyncio.Event()

    def clear(self) -> None:
        """Drop every entry; results of runs under way are not stored (the functions changed)."""
        self._generation += 1
        self._entries.clear()
        self._reads = ReadIndex()
        self.bytes = 0

    # -- answering calls ------------------------------------------------------------------------

    async def lookup(self, key: CacheKey) -> Cached | None:
        """The stored result for `key` if it is the result at a ts no older than the latest commit
        when this call began; None: a miss (the caller runs the query and `store`s it)."""
        if key not in self._entries:
            self.metrics.inc("ripple_query_cache_misses_total")
            return None
        try:
            latest = await self.freshest.get()
        except Exception:  # the database is away: the run will ride it out or report it
            latest = None
        if latest is not None and await self._applied_through(latest):
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.metrics.inc("ripple_query_cache_hits_total")
                return entry
        self.metrics.inc("ripple_query_cache_misses_total")
        return None

    def peek(self, key: CacheKey, ts: int) -> Cached | None:
        """For a live-query tick at `ts` (whose commits are all applied): a stored result that is
        the result at `ts`. Only runs at a known ts qualify: a plain run's snapshot may be newer
        than `ts`, and a tick's results must all be at one ts."""
        entry = self._entries.get(key)
        if entry is None or entry.at is None or self.applied_ts != ts:
            return None
        self._entries.move_to_end(key)
        self.metrics.inc("ripple_query_cache_hits_total")
        return entry

    def begin(self) -> tuple[int, int] | None:
        """Before a run that may be stored: (base ts, generation), None when it may not."""
        if not self.enabled or self.applied_ts is None:
            return None
        return self.applied_ts, self._generation

    def store(self, key: CacheKey, begun: tuple[int, int], value: Any, log_lines: list[str], stream_lines: list[str],
              reads: list[ReadRange], at: int | None = None) -> None:
        """Keep a successful run that began at `begun` (`begin`) unless a commit since touched
        what it read, the functions changed, or it is larger than the whole cache."""
        base, generation = begun
        if generation != self._generation or self.applied_ts is None or base < self._recent_from:
            return
        if base < self.applied_ts and overlaps(reads, (w for ts, writes in self._recent if ts > base for w in writes)):
            return
        encoded = kept(orjson.dumps(to_convex_json(value)))
        size = ENTRY_OVERHEAD + len(encoded) + sum(map(len, log_lines)) + sum(map(len, stream_lines)) + \
            len(key[1]) + len(key[2]) + sum(64 + len(r.lo) + len(r.hi) for r in reads)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._serial += 1
        self._entries[key] = Cached(key, encoded, log_lines, stream_lines, reads, size, at, self._serial)
        if old is None or old.reads != reads or key not in self._reads:  # a live query's re-run mostly reads the same
            self._reads.put(key, reads)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.metrics.inc("ripple_query_cache_evictions_total")

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._reads.discard(key)
            self.bytes -= entry.size

    async def _applied_through(self, ts: int) -> bool:
        """Has the tick applied every commit up to `ts`? Waits up to WAIT_FOR_COMMITS for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_FOR_COMMITS
        while self.applied_ts is None or self.applied_ts < ts:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.applied_ts is None:
                return False
            if self.wake is not None:
                self.wake()
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return False
        return True
