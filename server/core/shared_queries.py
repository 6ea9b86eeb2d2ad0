"""A live query as the subscription manager keeps it: one execution shared by identical
subscriptions (function, arguments, identity, pagination journal), its key, its result as
clients receive it, and the order a tick runs many of them in."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from server.core.contexts import Identity
from server.core.runtime import QueryRun
from server.core.transaction import ReadRange
from server.core.values import dumps, to_wire_json
from server.wire import QueryResult


class Subscriber(Protocol):
    def notify(self) -> None: ...


def query_result(run: QueryRun) -> QueryResult:
    """A query run as clients receive it; the value is serialized once for every subscriber."""
    if run.failure is None:
        return QueryResult.success(dumps(to_wire_json(run.value)), run.log_lines, run.journal)
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
    admin: bool = False  # subscribed with the admin key: internal queries resolve
    subscribers: set[Subscriber] = field(default_factory=set)
    reads: list[ReadRange] = field(default_factory=list)
    result: QueryResult | None = None
    slow: bool = False  # its last run overran LIVE_SLICE: it runs apart
    timeouts: int = 0  # runs in a row that timed out
    rest_until: float = 0.0  # loop time before which writes do not make it run again

    def ran(self, timed_out: bool, now: float, first: float, most: float) -> bool:
        """Note whether a run timed out; True when the query now rests (`first` seconds, doubling
        while it keeps timing out, at `most`)."""
        self.timeouts = self.timeouts + 1 if timed_out else 0
        self.rest_until = now + min(first * 2 ** (self.timeouts - 1), most) if timed_out else 0.0
        return timed_out


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
    queues = list(by_owner.values())
    order: list[SharedQuery] = []
    for i in range(max(len(q) for q in queues)):
        order.extend(q[i] for q in queues if i < len(q))
    return order


def subscription_key(path: str, args_json: Any, identity: Identity | None, journal: str | None, admin: bool = False) -> SubKey:
    try:
        args_key = orjson.dumps(args_json, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: the query's run will refuse it
        args_key = json.dumps(args_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    identity_key = orjson.dumps(dict(identity), option=orjson.OPT_SORT_KEYS) if identity is not None else b""
    return (path, args_key, b"admin|" + identity_key if admin else identity_key, journal)
