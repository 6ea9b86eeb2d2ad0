"""What a function receives as `ctx`, by kind, and what a call returns.

    query     QueryCtx     db (read-only), auth
    mutation  MutationCtx  db (reads and writes), auth, scheduler (commits with the mutation)
    action    ActionCtx    run_query / run_mutation / run_action, auth, scheduler (commits at once)

Also who called (`caller_key`) and what an idempotent mutation call stored (`StoredCall`).

The runtime (server/core/runtime.py) builds them; this module needs nothing of it at run time:
an action's nested calls go through the `NestedCall` it is given. The database and scheduler
types are imported for annotations only, so `from server import QueryCtx` loads no driver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from server.core.logs import LogBuffer
from server.core.registry import FunctionDef, Kind
from server.core.values import from_convex_json
from server.errors import ConvexError, FunctionFailure, IdempotencyKeyReused, shown

if TYPE_CHECKING:
    from server.core.documents import DatabaseReader, DatabaseWriter
    from server.core.scheduler.api import ActionScheduler, MutationScheduler


@dataclass
class Outcome:
    value: Any
    log_lines: list[str]
    ts: int | None = None  # commit ts of a writing mutation (unless not asked for), or the ts read at


class Identity(dict[str, Any]):
    """A verified user identity (claims in Convex's camelCase form), or absent (None)."""

    @property
    def subject(self) -> str:
        return str(self["subject"])

    @property
    def issuer(self) -> str:
        return str(self["issuer"])

    @property
    def token_identifier(self) -> str:
        return str(self["tokenIdentifier"])


def caller_key(identity: Identity | None, admin: bool) -> str:
    """Who made a call, as part of an idempotent mutation's key: a hash of the identity's
    tokenIdentifier (of all its claims if it has none) and of whether the caller is an admin;
    "anonymous" callers share one key. No token or claim is stored."""
    if identity is None:
        who = "admin" if admin else "anonymous"
    else:
        token = identity.get("tokenIdentifier")
        who = ("admin:" if admin else "identity:") + (
            str(token) if token is not None else orjson.dumps(dict(identity), option=orjson.OPT_SORT_KEYS).decode())
    return hashlib.sha256(who.encode()).hexdigest()


@dataclass(frozen=True)
class StoredCall:
    """An idempotent mutation call: its key (session id, request id, caller) and what it calls,
    as stored with its result in `_ripple_mutation_results`."""

    session_id: str
    request_id: int
    caller: str
    function: str
    args_hash: str

    def check_resend(self, function: str | None, args_hash: str | None) -> None:
        """A stored result answers only a resend of the same call. Rows from before functions
        were recorded (None) answer any call, as they did then (they expire within a day)."""
        if function is None:
            return
        what = f"request id {self.request_id} of session {shown(self.session_id)}"
        if function != self.function:
            raise IdempotencyKeyReused(f"{what} was already used for mutation {function}, not {self.function}; "
                                       "a new mutation needs a new request id")
        if args_hash != self.args_hash:
            raise IdempotencyKeyReused(f"{what} was already used for {function} with other arguments; "
                                       "a new mutation needs a new request id")


class Auth:
    def __init__(self, identity: Identity | None) -> None:
        self._identity = identity

    async def get_user_identity(self) -> Identity | None:
        return self._identity


class QueryCtx:
    def __init__(self, db: DatabaseReader, auth: Auth) -> None:
        self.db = db
        self.auth = auth


class MutationCtx(QueryCtx):
    db: DatabaseWriter

    def __init__(self, db: DatabaseWriter, auth: Auth, scheduler: MutationScheduler) -> None:
        super().__init__(db, auth)
        self.scheduler = scheduler


# (kind, function reference or path, arguments, identity) -> the nested call's outcome; raises
# FunctionFailure when the called function fails.
NestedCall = Callable[[Kind, "FunctionDef | str", dict[str, Any], "Identity | None"], Awaitable[Outcome]]


class ActionCtx:
    """Actions run outside transactions and may do network I/O; they reach the database through
    queries and mutations."""

    def __init__(self, call: NestedCall, identity: Identity | None, logs: LogBuffer, scheduler: ActionScheduler) -> None:
        self._call = call
        self._identity = identity
        self._logs = logs
        self.auth = Auth(identity)
        self.scheduler = scheduler

    async def _nested(self, kind: Kind, ref: FunctionDef | str, args: dict[str, Any] | None) -> Any:
        try:
            outcome = await self._call(kind, ref, args or {}, self._identity)
        except FunctionFailure as failure:
            self._logs.extend(failure.log_lines)
            if failure.has_data:
                raise ConvexError(from_convex_json(failure.data)) from None
            raise RuntimeError(failure.message) from None
        self._logs.extend(outcome.log_lines)
        return outcome.value

    async def run_query(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("query", ref, args)

    async def run_mutation(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("mutation", ref, args)

    async def run_action(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("action", ref, args)
