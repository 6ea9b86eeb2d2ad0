"""Group commit: the mutations of this process queued on the same hot keys run back to back in
one transaction and commit together; one that fails is undone alone.

Why: once the hot-key queue (hot_keys.py) makes the increments of one counter take turns,
contention no longer limits them; each still pays a transaction's fixed part (a pooled
connection, BEGIN, the commit tail with its change-log row and NOTIFY, COMMIT with its WAL
flush, a live-query tick). A group pays it once for all of its members.

How: a call whose keys are hot (`HotKeys.queue_keys`) becomes a `Member` of the open `Group` of
those keys, or opens one. A group is led by a task of its own (not any caller's: a caller that
leaves cannot cancel the commit of the others). The leader takes the keys' turn (the queue's
locks, behind the group before it), one connection, one SERIALIZABLE transaction, and runs the
members in the order they joined, with Convex's limits counted anew for each
(Transaction.next_execution): each sees the writes of the ones before it, a serial order.
Callers keep joining while it runs. When no member is left to run, the group closes (the next
caller opens the next group, which waits for this one's turn) and commits once.

Savepoints only when needed: a savepoint costs a round trip per member (SAVEPOINT travels on its
own before the member's first statement), as much as one of its statements, and members rarely
fail. So a group first runs with none. If a member fails, the transaction is rolled back and
run again without it (`_Redo`, counted in ripple_mutation_group_reruns_total): the members
before it again, then the rest, now each under a savepoint of its own, so a second failure is
undone alone. A failed member is not run again: its error stands as of its turn.

What each caller gets, only once the COMMIT succeeded: its own value, log lines and scheduled
jobs, and the group's commit ts (one ts for all: the commit log holds one row whose write set
has each document once, the keys it had before the group and after it, and live queries see the
members' writes together, as if no one had read between them). A member that fails (its
function throws, its stored result belongs to another call) is undone (as above) and gets its
own error; the others commit. What aborts the transaction (a conflict, a lost
connection) answers nobody as committed: each member gets the error and its caller retries it
by Runtime's policy (as a member of the next group: its keys stay hot). A COMMIT whose answer
was lost is resolved first (commit.py): committed, every member's result stands.

A group runs at most `MAX_MEMBERS` members (in a rerun, each savepoint that writes takes a
subtransaction id; PostgreSQL's snapshots slow down past 64 in one transaction) and starts none after it has
run for `seconds` (Config.group_commit_seconds, 50 ms: a slow member holds up few others): the
members it did not start open the next group, in their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.core.commit import OutcomeUnknown, described
from server.core.database import Database, connection_failure
from server.core.hot_keys import HotKeys, Ticket
from server.core.metrics import Metrics
from server.core.transaction import CONFLICTS, Transaction
from server.errors import ConnectionLost, TransactionConflict

log = logging.getLogger("ripple.mutations")

MAX_MEMBERS = 32


@dataclass
class Done:
    """What a member's body returns: its value and log lines, its scheduler (None for the stored
    result of an earlier run), and whether its caller wants the commit ts."""

    value: Any
    log_lines: list[str]
    scheduler: Any
    wants_ts: bool


Body = Callable[[Transaction], Coroutine[Any, Any, Done]]  # runs one member in the group's transaction
Opener = Callable[[asyncpg.Connection], contextlib.AbstractAsyncContextManager[Transaction]]
TsAfterCommit = Callable[[asyncpg.Connection, bool], Awaitable[int | None]]


class Member:
    """One caller's mutation in a group. Its body runs in the leader's transaction but in the
    caller's context (context variables: who called, the scheduled job it runs for)."""

    __slots__ = ("body", "context", "future")

    def __init__(self, body: Body) -> None:
        self.body = body
        self.context = contextvars.copy_context()
        self.future: asyncio.Future[tuple[Done, int | None]] = asyncio.get_running_loop().create_future()


class Group:
    def __init__(self, keys: tuple[str, ...], members: list[Member]) -> None:
        self.keys = keys
        self.members = members
        self.started = 0  # members[:started] were taken to run


class GroupCommit:
    """This process's open groups, one per key set (see the module docstring)."""

    def __init__(self, db: Database, hot_keys: HotKeys, metrics: Metrics, opener: Opener,
                 ts_after_commit: TsAfterCommit, seconds: float) -> None:
        self.db = db
        self.hot_keys = hot_keys
        self.metrics = metrics
        self.opener = opener
        self.ts_after_commit = ts_after_commit
        self.seconds = seconds  # a group starts no member after running this long
        self._open: dict[tuple[str, ...], Group] = {}
        self._leaders: set[asyncio.Task[None]] = set()
        metrics.describe("ripple_mutation_group_commits_total", "counter",
                         "Transactions that committed the mutations of a hot-key group together")
        metrics.describe("ripple_mutation_grouped_total", "counter",
                         "Mutations that ran in a hot-key group's transaction (group commit)")
        metrics.describe("ripple_mutation_group_reruns_total", "counter",
                         "Hot-key groups run again, with savepoints, because a member failed")

    async def run(self, keys: tuple[str, ...], body: Body) -> tuple[Done, int | None]:
        """Run `body` as a member of the open group of `keys` (or of a new one); its Done and
        the group's commit ts once committed. Raises the member's own error after the commit,
        or the group's (a conflict, a lost connection, OutcomeUnknown) if it did not commit."""
        member = Member(body)
        group = self._open.get(keys)
        if group is not None and len(group.members) < MAX_MEMBERS:
            group.members.append(member)
            self.metrics.inc("ripple_mutation_queued_total")  # it waits for the ones before it
            self.hot_keys.heat(keys)  # contention goes on
        else:
            self._lead(Group(keys, [member]))
        return await member.future

    def _lead(self, group: Group) -> None:
        self._open[group.keys] = group
        task = asyncio.get_running_loop().create_task(self._leader(group), name="ripple-group-commit",
                                                      context=contextvars.Context())
        self._leaders.add(task)
        task.add_done_callback(self._leaders.discard)

    def _close(self, group: Group) -> None:
        if self._open.get(group.keys) is group:
            del self._open[group.keys]

    def _next(self, group: Group, deadline: float) -> Member | None:
        """The next member to run, or None: then the group is closed (nothing awaits between
        this and the commit, so no one joins unseen). Past the deadline, the members not
        started open the next group."""
        while group.started < len(group.members):
            if group.started and time.monotonic() > deadline:
                rest = group.members[group.started:]
                del group.members[group.started:]
                self._close(group)
                self._lead(Group(group.keys, rest))
                return None
            member = group.members[group.started]
            group.started += 1
            if not member.future.done():  # done: its caller left before it ran
                return member
        self._close(group)
        return None

    async def _leader(self, group: Group) -> None:
        holder = Ticket(lambda: None)
        ran: list[tuple[Member, Done | Exception]] = []
        try:
            await self.hot_keys.acquire(holder, group.keys)
            ts = await self._run(group, ran)
        except BaseException as exc:
            self._close(group)
            if isinstance(exc, CONFLICTS):
                self.hot_keys.heat(group.keys)
            for member in group.members:
                if not member.future.done():
                    member.future.set_exception(_for_member(exc))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.hot_keys.done(holder)
        self.metrics.inc("ripple_mutation_group_commits_total")
        self.metrics.inc("ripple_mutation_grouped_total", len(ran))
        for member, result in ran:
            if member.future.done():
                continue
            if isinstance(result, Exception):
                member.future.set_exception(result)
            else:
                member.future.set_result((result, ts))

    async def _run(self, group: Group, ran: list[tuple[Member, Done | Exception]]) -> int | None:
        """Run the group's members in one transaction and commit; the commit ts (when wanted).
        First with no savepoints; if a member fails, the transaction is rolled back and run
        again without it, each member under a savepoint of its own (`_Redo`)."""
        deadline = time.monotonic() + self.seconds
        failed: list[tuple[Member, Exception]] = []
        async with self.db.acquire() as conn:
            while True:
                replay = [member for member, _ in ran if not member.future.done()]
                ran.clear()
                try:
                    async with self.opener(conn) as tx:
                        await self._members(tx, group, deadline, replay, ran, savepoints=bool(failed))
                except _Redo as redo:
                    failed.append((redo.member, redo.error))
                    self.metrics.inc("ripple_mutation_group_reruns_total")
                    continue
                break
            ran.extend(failed)
            ts = tx.ts
            if ts is None and any(isinstance(r, Done) and r.wants_ts for _, r in ran):
                ts = await self.ts_after_commit(conn, bool(tx.writes))
        return ts

    async def _members(self, tx: Transaction, group: Group, deadline: float, replay: list[Member],
                       ran: list[tuple[Member, Done | Exception]], *, savepoints: bool) -> None:
        """Run `replay` (the members that ran before a rerun), then the group's next members,
        one after another in `tx`."""
        queue = iter(replay)
        while (member := next(queue, None) or self._next(group, deadline)) is not None:
            tx.next_execution()
            try:
                if savepoints:
                    async with tx.savepoint(release=True):
                        ran.append((member, await self._body(member, tx)))
                else:
                    ran.append((member, await self._body(member, tx)))
            except Exception as exc:
                if tx.conflicted or tx.lost:
                    raise  # the transaction is over: no member commits
                if not savepoints:
                    raise _Redo(member, exc) from exc
                ran.append((member, exc))  # rolled back to its savepoint: its own error

    @staticmethod
    def _body(member: Member, tx: Transaction) -> asyncio.Task[Done]:
        """The member's body, run in its caller's context."""
        return asyncio.get_running_loop().create_task(member.body(tx), context=member.context)


class _Redo(Exception):
    """A member failed in a group running without savepoints: its writes cannot be undone
    alone, so the transaction is rolled back and the group runs again without it."""

    def __init__(self, member: Member, error: Exception) -> None:
        super().__init__("a member of the group failed; running the others again")
        self.member, self.error = member, error


def _for_member(exc: BaseException) -> BaseException:
    """The error a member of a group that did not commit gets (an exception of its own)."""
    if isinstance(exc, CONFLICTS):
        return TransactionConflict(f"the group it ran in conflicted; it will be retried ({described(exc)})")
    if isinstance(exc, OutcomeUnknown):
        return OutcomeUnknown(str(exc))
    if isinstance(exc, ConnectionLost) or connection_failure(exc):
        return ConnectionLost(f"the group it ran in lost its database connection ({described(exc)})")
    if isinstance(exc, asyncio.CancelledError):  # the server stops; COMMIT may have been in flight
        return OutcomeUnknown("the server stopped while the group it ran in was committing")
    log.error("a group commit failed", exc_info=exc)
    return RuntimeError(f"the group it ran in failed: {described(exc)}")
