"""What a function receives as `ctx`, by kind, and what a call returns.

    query     QueryCtx     db (read-only), auth
    mutation  MutationCtx  db (reads and writes), auth, scheduler (commits with the mutation)
    action    ActionCtx    run_query / run_mutation / run_action, auth, scheduler (commits at once)

The runtime (server/core/runtime.py) builds them; this module needs nothing of it at run time:
an action's nested calls go through the `NestedCall` it is given. The database and scheduler
types are imported for annotations only, so `from server import QueryCtx` loads no driver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.core.logs import LogBuffer
from server.core.registry import FunctionDef, Kind
from server.errors import ConvexError, FunctionFailure

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
                raise ConvexError(failure.data) from None
            raise RuntimeError(failure.message) from None
        self._logs.extend(outcome.log_lines)
        return outcome.value

    async def run_query(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("query", ref, args)

    async def run_mutation(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("mutation", ref, args)

    async def run_action(self, ref: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._nested("action", ref, args)
