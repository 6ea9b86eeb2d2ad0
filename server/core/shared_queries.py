"""A live query as the subscription manager keeps it: one execution shared by identical
subscriptions (function, arguments, identity, pagination journal), its key, its result as
clients receive it, and the order a tick runs many of them in."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from server.core.contexts import Identity
from server.core.loader import App
from server.core.query_cache import CacheKey, cache_key
from server.core.registry import FunctionDef
from server.core.runtime import QueryRun, Runtime
from server.core.transaction import ReadRange
from server.core.values import dumps, from_client_json, kept, to_wire_json
from server.errors import RippleUsageError
from server.wire import QueryResult


class Subscriber(Protocol):
    def notify(self) -> None: ...


def query_result(run: QueryRun) -> QueryResult:
    """A query run as clients receive it; the value is serialized once for every subscriber."""
    if run.failure is None:
        return QueryResult.success(kept(dumps(to_wire_json(run.value))), run.log_lines, run.journal)
    failure = run.failure
    return QueryResult.failed(failure.message, failure.log_lines, run.journal, failure.data, failure.has_data)


SubKey = tuple[str, bytes, bytes, str | None]


@dataclass(eq=False, slots=True)
class SharedQuery:
    key: SubKey
    path: str
    args: Any  # decoded argument object
    identity: Identity | None
    journal: str | None
    admin: bool = False  # subscribed with the admin key: internal queries resolve
    subscribers: set[Subscriber] = field(default_factory=set)
    reads: list[ReadRange] = field(default_factory=list)
    result: QueryResult | None = None
    slow: bool = False  # its last run overran LIVE_SLICE: it runs apart
    timeouts: int = 0  # runs in a row that timed out
    rest_until: float = 0.0  # loop time before which writes do not make it run again
    prepared: Prepared | None = None  # its function and arguments as the app now loaded checked them

    def ran(self, timed_out: bool, now: float, first: float, most: float) -> bool:
        """Note whether a run timed out; True when the query now rests (`first` seconds, doubling
        while it keeps timing out, at `most`)."""
        self.timeouts = self.timeouts + 1 if timed_out else 0
        self.rest_until = now + min(first * 2 ** (self.timeouts - 1), most) if timed_out else 0.0
        return timed_out


@dataclass
class FinishedApart:
    """A run that finished apart from the ticks: its outcome is valid at `ts`."""

    sq: SharedQuery
    outcome: QueryRun | QueryResult | None  # None: it failed to run (it runs again)
    ts: int
    generation: int  # of the functions it ran; a reload since makes it worthless


@dataclass(slots=True)
class Prepared:
    """A subscription's function resolved and its arguments validated, once per loaded app (a
    re-run of a live query repeats neither), and its query cache key."""

    app: App  # the load it was resolved in: another load prepares it again
    fn: FunctionDef
    kwargs: dict[str, Any] | None  # validated; None: validated again for every run (see `prepare`)
    key: CacheKey


_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def prepare(runtime: Runtime, sq: SharedQuery) -> Prepared:
    """`sq`'s function (internal ones only for the admin key) and arguments, as `sq.prepared`
    holds them for the app now loaded. Validated arguments are kept only when all of them are
    immutable: a run gets the same objects every time, so a query that changed a list it was
    given would change its own later runs' arguments. Raises RippleUsageError (no such
    function, arguments refused): the run reports it."""
    app, prepared = runtime.app, sq.prepared
    if prepared is not None and prepared.app is app:
        return prepared
    fn = app.registry.resolve(sq.path, kind="query", allow_internal=sq.admin)
    args = from_client_json(sq.args, path="args")  # a client's, within its limits
    kwargs = fn.validate_args(args)
    key = cache_key(str(fn.path), args, sq.identity)
    keep = all(type(value) in _SCALARS for value in kwargs.values())
    sq.prepared = prepared = Prepared(app, fn, kwargs if keep else None, key)
    return prepared


def run_arguments(sq: SharedQuery, prepared: Prepared) -> dict[str, Any]:
    """The validated arguments of a run of `sq`: the kept ones, or validated afresh."""
    if prepared.kwargs is not None:
        return prepared.kwargs
    return prepared.fn.validate_args(from_client_json(sq.args, path="args"))


CacheSlot = tuple[FunctionDef, CacheKey] | None  # a subscription's function and query cache key


def cache_slot(runtime: Runtime, sq: SharedQuery) -> CacheSlot:
    """The function `sq` may run and its cache key; None when the cache is off or cannot hold
    it."""
    if sq.journal is not None or not runtime.query_cache.enabled:
        return None  # a page pinned to where it ended is this subscription's own
    try:
        prepared = prepare(runtime, sq)
    except RippleUsageError:  # unknown or internal function, bad arguments: its run reports it
        return None
    return prepared.fn, prepared.key


def cached_run(runtime: Runtime, slot: CacheSlot, ts: int) -> QueryRun | None:
    """The query cache's result for a subscription's `slot` at the tick's `ts`, if it has one
    (query_cache.py)."""
    entry = runtime.query_cache.peek(slot[1], ts) if slot is not None else None
    if slot is None or entry is None:
        return None
    runtime.record_cached(str(slot[0].path), entry)
    return QueryRun(entry.value(), list(entry.log_lines), entry.reads, None, None)


def keep_run(runtime: Runtime, slot: CacheSlot, outcome: QueryRun | QueryResult, begun: tuple[int, int] | None,
             ts: int) -> None:
    """Store a tick's successful run of a subscription's `slot` at `ts` in the query cache."""
    if slot is None or begun is None or not isinstance(outcome, QueryRun) or outcome.failure is not None \
            or outcome.journal is not None:
        return
    runtime.query_cache.store(slot[1], begun, outcome.value, outcome.log_lines, outcome.stream_lines, outcome.reads, at=ts)


def round_robin(queries: list[SharedQuery]) -> list[SharedQuery]:
    """`queries` in an order that takes one of each subscriber's in turn, so that a client with
    many queries to run does not put everyone else's behind them. A shared query counts for
    one of its subscribers."""
    if len(queries) < 2:
        return queries
    by_owner: dict[int, list[SharedQuery]] = {}
    for sq in queries:
        owner = id(next(iter(sq.subscribers))) if sq.subscribers else 0
        by_owner.setdefault(owner, []).append(sq)
    if len(by_owner) == len(queries):  # one query each: the order is theirs
        return queries
    queues = list(by_owner.values())
    order: list[SharedQuery] = []
    for i in range(max(len(q) for q in queues)):
        order.extend(q[i] for q in queues if i < len(q))
    return order


def subscription_key(path: str, args_json: Any, identity: Identity | None, journal: str | None, admin: bool = False) -> SubKey:
    try:
        args_key = kept(orjson.dumps(args_json, option=orjson.OPT_SORT_KEYS))
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: the query's run will refuse it
        args_key = json.dumps(args_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    identity_key = kept(orjson.dumps(dict(identity), option=orjson.OPT_SORT_KEYS)) if identity is not None else b""
    return (path, args_key, b"admin|" + identity_key if admin else identity_key, journal)
