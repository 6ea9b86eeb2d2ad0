"""What a function receives as `ctx`, by kind, and what a call returns.

    query     QueryCtx     db (read-only), auth, env, storage (read), run_query (in the same
                           transaction)
    mutation  MutationCtx  db (reads and writes), auth, env, scheduler and storage (commit with
                           the mutation), run_query / run_mutation (in the same transaction)
    action    ActionCtx    run_query / run_mutation / run_action, vector_search, auth, env,
                           scheduler and storage (commit at once)

Also who called (`caller_key`) and what an idempotent mutation call stored (`StoredCall`).

The runtime (server/core/runtime.py) builds them; this module needs nothing of it at run time:
nested calls go through the `NestedCall` (an action's) or `InnerCall` (a query's or mutation's)
it is given. The database and scheduler types are imported for annotations only, so
`from server import QueryCtx` loads no driver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from server.core.env import Env, EnvValues
from server.core.logs import LogBuffer
from server.core.registry import FunctionDef, Kind
from server.core.values import from_convex_json
from server.errors import (
    ConvexError,
    FunctionFailure,
    IdempotencyKeyReused,
    RippleUsageError,
    shown,
)

if TYPE_CHECKING:
    from server.core.documents import DatabaseReader, DatabaseWriter
    from server.core.scheduler.api import ActionScheduler, MutationScheduler
    from server.core.storage.api import StorageActionWriter, StorageReader, StorageWriter


@dataclass
class Outcome:
    value: Any
    log_lines: list[str]
    ts: int | None = None  # commit ts of a writing mutation (unless not asked for), or the ts read at
    cache_key: tuple[str, bytes, bytes] | None = None  # a query at the latest ts: its query cache key


# Convex's standard UserIdentity fields, by their Python names (identity.picture_url).
_STANDARD_FIELDS = {
    "name": "name", "given_name": "givenName", "family_name": "familyName", "nickname": "nickname",
    "preferred_username": "preferredUsername", "profile_url": "profileUrl", "picture_url": "pictureUrl",
    "website_url": "websiteUrl", "email": "email", "email_verified": "emailVerified", "gender": "gender",
    "birthday": "birthday", "timezone": "timezone", "language": "language", "phone_number": "phoneNumber",
    "phone_number_verified": "phoneNumberVerified", "address": "address", "updated_at": "updatedAt",
}


class Identity(dict[str, Any]):
    """A verified user identity: a dict of Convex's UserIdentity fields (camelCase, as clients
    receive it: tokenIdentifier, subject, issuer, pictureUrl, ...) and custom claims under their
    own names, so `identity["email"]`, `identity.get("role")`. The standard fields are also
    attributes under Python names (`identity.email`, `identity.picture_url`: None when absent).

    `expires_at` (epoch seconds; not a claim, so not in the dict) is when the token it came from
    stops being honoured; None for identities that do not expire (an admin acting as a user)."""

    expires_at: float | None = None

    @property
    def subject(self) -> str:
        return str(self["subject"])

    @property
    def issuer(self) -> str:
        return str(self["issuer"])

    @property
    def token_identifier(self) -> str:
        return str(self["tokenIdentifier"])

    if not TYPE_CHECKING:  # a type checker sees Any for these

        def __getattr__(self, name: str) -> Any:
            field_name = _STANDARD_FIELDS.get(name)
            if field_name is None:
                raise AttributeError(f"Identity has no attribute {name!r}; custom claims are read as "
                                     f"identity[{name!r}] or identity.get({name!r})", name=name, obj=self)
            return self.get(field_name)


def caller_key(identity: Identity | None, admin: bool) -> str:
    """Who made a call, as part of an idempotent mutation's key: a hash of the identity's
    tokenIdentifier (of all its claims if it has none) and of whether the caller is an admin
    (an admin acting as a user is not that user); "anonymous" callers share one key. No token
    or claim is stored."""
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


# (kind, function reference or path, arguments, identity) -> the nested call's outcome; raises
# FunctionFailure when the called function fails.
NestedCall = Callable[[Kind, "FunctionDef | str", dict[str, Any], "Identity | None"], Awaitable[Outcome]]
# The same inside a query's or mutation's transaction, which fixes the identity.
InnerCall = Callable[[Kind, "FunctionDef | str", dict[str, Any]], Awaitable[Outcome]]
# (table, index, vector, limit, filter) -> [{"_id", "_score"}] (search/vector_query.py).
VectorSearch = Callable[[Any, Any, Any, Any, Any], Awaitable[list[dict[str, Any]]]]


async def _result(call: Awaitable[Outcome], logs: LogBuffer, recorded: bool = False) -> Any:
    """A nested call's value, its log lines appended to the caller's (`recorded`: the call is an
    entry of the log stream of its own, see LogBuffer.extend). Its failure is raised in the
    caller as ConvexError with the same data, or else as RuntimeError with its message."""
    try:
        outcome = await call
    except FunctionFailure as failure:
        logs.extend(failure.log_lines, recorded=recorded)
        if failure.has_data:
            raise ConvexError(from_convex_json(failure.data)) from None
        raise RuntimeError(failure.message) from None
    logs.extend(outcome.log_lines, recorded=recorded)
    return outcome.value


# What a query or mutation cannot call, and why: as in Convex (the alternative is named).
_REFUSED = {
    ("QueryCtx", "run_mutation"): "a query cannot run a mutation (queries only read); call it from a mutation or an action",
    ("QueryCtx", "run_action"): "a query cannot run an action (queries only read); call it from an action, or "
                                "schedule it from a mutation with ctx.scheduler.run_after(0, ref, args)",
    ("MutationCtx", "run_action"): "a mutation cannot run an action (its side effects would not roll back with the "
                                   "transaction); schedule it instead: await ctx.scheduler.run_after(0, ref, args) "
                                   "runs it once this mutation committed",
    ("QueryCtx", "vector_search"): "vector search runs in actions only (as in Convex); call it from an action and "
                                   "load the documents it finds with ctx.run_query",
}


class QueryCtx:
    storage: StorageReader

    def __init__(self, db: DatabaseReader, auth: Auth, call: InnerCall | None = None, logs: LogBuffer | None = None,
                 storage: StorageReader | None = None, env: Env | None = None) -> None:
        self.db = db
        self.auth = auth
        self.env = Env(EnvValues()) if env is None else env
        if storage is not None:
            self.storage = storage
        self._call = call
        self._logs = LogBuffer() if logs is None else logs

    async def run_query(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        """Run a query in this function's transaction: it sees this transaction's snapshot (and
        a mutation's own writes so far) and its reads are this function's reads. Arguments and
        result are validated as for a client's call; internal queries may be called."""
        return await self._inner("query", ref, args)

    async def _inner(self, kind: Kind, ref: FunctionDef | str, args: dict[str, Any] | None) -> Any:
        if self._call is None:
            raise RippleUsageError(f"ctx.run_{kind} is not available on this context")
        return await _result(self._call(kind, ref, args or {}), self._logs)

    if not TYPE_CHECKING:  # type checkers keep reporting unknown attributes as such

        def __getattr__(self, name: str) -> NoReturn:
            for cls in type(self).__mro__:
                if (why := _REFUSED.get((cls.__name__, name))) is not None:
                    raise AttributeError(f"{type(self).__name__} has no {name}: {why}", name=name, obj=self)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)


class MutationCtx(QueryCtx):
    db: DatabaseWriter
    storage: StorageWriter

    def __init__(self, db: DatabaseWriter, auth: Auth, scheduler: MutationScheduler, call: InnerCall | None = None,
                 logs: LogBuffer | None = None, storage: StorageWriter | None = None, env: Env | None = None) -> None:
        super().__init__(db, auth, call, logs, storage, env)
        self.scheduler = scheduler

    async def run_mutation(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        """Run a mutation in this transaction, as a sub-transaction: if it raises, its writes
        and the jobs it scheduled are rolled back (and its error is raised here, as from
        ActionCtx.run_mutation); what this mutation wrote before and writes after stays."""
        return await self._inner("mutation", ref, args)


class ActionCtx:
    """Actions run outside transactions and may do network I/O; they reach the database through
    queries and mutations."""

    storage: StorageActionWriter

    def __init__(self, call: NestedCall, identity: Identity | None, logs: LogBuffer, scheduler: ActionScheduler,
                 storage: StorageActionWriter | None = None, env: Env | None = None,
                 vector_search: VectorSearch | None = None) -> None:
        self._call = call
        self._vector_search = vector_search
        self._identity = identity
        self._logs = logs
        self.auth = Auth(identity)
        self.env = Env(EnvValues()) if env is None else env
        self.scheduler = scheduler
        if storage is not None:
            self.storage = storage

    async def _nested(self, kind: Kind, ref: FunctionDef | str, args: dict[str, Any] | None) -> Any:
        return await _result(self._call(kind, ref, args or {}, self._identity), self._logs, recorded=True)

    async def run_query(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("query", ref, args)

    async def run_mutation(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("mutation", ref, args)

    async def run_action(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("action", ref, args)

    async def vector_search(self, table: str, index: str, vector: Sequence[float] | Mapping[str, Any],
                            limit: int | None = None, filter: Callable[[Any], Any] | None = None,
                            ) -> list[dict[str, Any]]:
        """The documents of `table` whose vectors in vector index `index` are most similar to
        `vector` (cosine similarity): `[{"_id": id, "_score": similarity}]`, best first.
        `limit`: 1 to 256 (default 10); `filter`: `lambda q: q.eq(field, value)` or
        `q.or_(q.eq(...), ...)` on the index's filter fields. `vector` may also be Convex's
        `{"vector": [...], "limit": n, "filter": fn}`. docs/search.md, Vector search."""
        if self._vector_search is None:
            raise RippleUsageError("ctx.vector_search is not available on this context")
        return await self._vector_search(table, index, vector, limit, filter)
