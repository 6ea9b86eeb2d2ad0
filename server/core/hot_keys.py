"""Hot keys: this process's mutations that keep conflicting over the same documents or index
ranges take turns in a queue per key, instead of aborting each other and retrying blindly.

PostgreSQL's serializable checks stay the truth; the queue is only an in-process optimisation.
Two processes each have their own queues, a queue's wait is bounded, and a mutation that did not
get its turn runs anyway: whatever the queue does, a conflict is still detected and retried.

A key is a document a mutation updated or deleted, or an index range it read (`keys_of`; the ids
of documents it inserted are new every time and never keys). How a key becomes hot: an attempt
of a top-level mutation loses a conflict, and the keys of what it touched become hot; the call
(function, arguments and caller) is remembered with them (`MAX_CALLS` calls, least recently
used forgotten first). A key stays hot while conflicts on it or waits in its queue keep
happening, and stops being hot `HOT_SECONDS` after the last one.

Who queues: the attempt after a conflict (on its failed attempt's keys), and the first attempt of
a remembered call (on its remembered keys that are hot). A successful attempt that touched a hot
key is remembered too, so the next call like it queues from its first attempt. A queued attempt
takes its keys' locks (asyncio locks, first come first served) in sorted order before it takes a
database connection, waiting at most `QUEUE_WAIT_SECONDS` for all of them, and gives them back
as soon as its transaction ended. An attempt that conflicts again on the same keys keeps its
locks for its next attempt (it keeps its place; no backoff sleep, the queue paces it). Locks are
never held across anything but the attempt's own transaction: no deadlock among them (one order),
none with the connection pool (taken after the locks), and a lock holder waiting on PostgreSQL
waits for a transaction that is running, not queued.

With no hot key (the usual case) a call costs one dict lookup per attempt.

With group commit on (group_commit.py), an attempt that would queue (`queue_keys`) joins the
group of its keys instead, and the group's leader takes the turn (`acquire`, `done`) for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field

from server.core.metrics import Metrics
from server.core.transaction import CONFLICTS, Transaction

HOT_SECONDS = 5.0  # a key stays hot this long after its last conflict or wait
QUEUE_WAIT_SECONDS = 2.0  # the most an attempt waits for all of its keys; then it runs anyway
MAX_KEYS = 16  # an attempt touching more is no hot-key pattern: it retries blindly
MAX_CALLS = 10_000  # remembered calls
MAX_HOT_KEYS = 10_000  # past it, keys no longer hot are swept


@dataclass
class _Key:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    hot_until: float = 0.0
    users: int = 0  # attempts holding or waiting for the lock


def keys_of(tx: Transaction) -> tuple[str, ...]:
    """What an attempt touched, as queue keys (sorted): the documents it updated or deleted and
    the index ranges it read; () when that is more than MAX_KEYS (its writes alone, if few)."""
    written = {f"d:{doc_id}" for doc_id, write in tx.writes.items() if write.old_keys is not None}
    keys = written | {f"r:{r.table}:{r.index}:{r.lo.hex()}:{r.hi.hex()}" for r in tx.reads}
    if len(keys) > MAX_KEYS:
        keys = written if len(written) <= MAX_KEYS else set()
    return tuple(sorted(keys))


class Ticket:
    """One top-level mutation call's way through the queues, over all of its attempts. `call`
    says who it is (for remembering), computed only when some key is hot."""

    def __init__(self, call: Callable[[], Hashable | None]) -> None:
        self._call = call
        self._call_id: Hashable | None = None
        self.keys: tuple[str, ...] = ()  # its next attempt's keys (known after a conflict)
        self.held: list[tuple[str, _Key]] = []
        self.tx: Transaction | None = None  # the running attempt's transaction

    def call_id(self) -> Hashable | None:
        if self._call_id is None:
            self._call_id = self._call()
        return self._call_id

    def watch(self, tx: Transaction) -> None:
        """`tx` is this attempt's transaction: what it touches decides the queues."""
        self.tx = tx

    @property
    def queued(self) -> bool:
        """Its next attempt waits its turn (and so needs no backoff sleep)."""
        return bool(self.keys)


class HotKeys:
    """The hot keys of this process and their queues (see the module docstring)."""

    def __init__(self, metrics: Metrics, *, enabled: bool = True, wait_seconds: float = QUEUE_WAIT_SECONDS) -> None:
        self.metrics = metrics
        self.enabled = enabled
        self.wait_seconds = wait_seconds
        self._keys: dict[str, _Key] = {}
        self._calls: OrderedDict[Hashable, tuple[str, ...]] = OrderedDict()
        metrics.gauge("ripple_hot_keys", self.hot_count)

    def hot_count(self) -> int:
        now = time.monotonic()
        return sum(1 for k in self._keys.values() if k.hot_until > now)

    def held_count(self) -> int:
        """Locks held right now (0 whenever no queued attempt runs)."""
        return sum(1 for k in self._keys.values() if k.lock.locked())

    @contextlib.asynccontextmanager
    async def turn(self, ticket: Ticket) -> AsyncIterator[None]:
        """One attempt of `ticket`'s call: waits for its keys' locks, then runs the block; what
        the block's transaction (`ticket.watch`) touched is learned when it conflicts, or when
        it succeeds and touched a hot key. The locks are given back when the block ends (or at
        `done`), except after a conflict on the same keys: its next attempt keeps them."""
        if not self.enabled:
            yield
            return
        ticket.tx = None
        keys = ticket.keys or self._predicted(ticket)
        if tuple(name for name, _ in ticket.held) != keys:
            self.done(ticket)
            await self.acquire(ticket, keys)
        keep = False
        try:
            yield
        except CONFLICTS:
            if ticket.tx is not None:
                ticket.keys = keys_of(ticket.tx)
                self.heat(ticket.keys)
                self._remember(ticket, ticket.keys)
                keep = bool(ticket.keys) and ticket.keys == tuple(name for name, _ in ticket.held)
            raise
        else:
            # Not queued although a key is hot: did it touch one? Then its kind queues next time.
            if self._keys and not ticket.held and ticket.tx is not None:
                touched = keys_of(ticket.tx)
                if any(self._is_hot(key) for key in touched):
                    self._remember(ticket, touched)
        finally:
            if not keep:
                self.done(ticket)

    def done(self, ticket: Ticket) -> None:
        """Give back the locks `ticket` holds (its transaction ended); idempotent."""
        now = time.monotonic()
        while ticket.held:
            name, key = ticket.held.pop()
            key.lock.release()
            key.users -= 1
            if key.users == 0 and key.hot_until <= now:
                del self._keys[name]

    def queue_keys(self, ticket: Ticket) -> tuple[str, ...]:
        """The keys `ticket`'s next attempt would queue on: after a conflict, those of its
        failed attempt; else its call's remembered keys that are hot; () when none (or off).
        Group commit (group_commit.py) runs such an attempt in the group of these keys."""
        if not self.enabled:
            return ()
        return ticket.keys or self._predicted(ticket)

    def _predicted(self, ticket: Ticket) -> tuple[str, ...]:
        """The remembered keys of the ticket's call that are hot now."""
        if not self._keys or not self._calls:
            return ()
        call = ticket.call_id()
        keys = self._calls.get(call) if call is not None else None
        if not keys:
            return ()
        self._calls.move_to_end(call)
        return tuple(k for k in keys if self._is_hot(k))

    def _is_hot(self, name: str) -> bool:
        key = self._keys.get(name)
        return key is not None and key.hot_until > time.monotonic()

    async def acquire(self, ticket: Ticket, keys: tuple[str, ...]) -> None:
        """Take the locks of `keys` in order, within `wait_seconds` for all; the ones not taken
        in time are skipped (the attempt runs anyway: PostgreSQL still checks it)."""
        if not keys:
            return
        deadline = time.monotonic() + self.wait_seconds
        waited = False
        for name in keys:
            key = self._keys.get(name)
            if key is None:
                key = self._keys[name] = _Key()
            key.users += 1
            if key.lock.locked():
                if not waited:  # counted as it begins to wait
                    self.metrics.inc("ripple_mutation_queued_total")
                waited = True
                key.hot_until = time.monotonic() + HOT_SECONDS  # contention goes on
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await key.lock.acquire()
            except TimeoutError:
                key.users -= 1
                self.metrics.inc("ripple_mutation_queue_timeouts_total")
                continue
            except BaseException:
                key.users -= 1
                self.done(ticket)
                raise
            ticket.held.append((name, key))

    def heat(self, keys: tuple[str, ...]) -> None:
        until = time.monotonic() + HOT_SECONDS
        for name in keys:
            key = self._keys.get(name)
            if key is None:
                key = self._keys[name] = _Key()
            key.hot_until = until
        if len(self._keys) > MAX_HOT_KEYS:
            now = time.monotonic()
            for name in [n for n, k in self._keys.items() if k.users == 0 and k.hot_until <= now]:
                del self._keys[name]

    def _remember(self, ticket: Ticket, keys: tuple[str, ...]) -> None:
        call = ticket.call_id()
        if call is None or not keys:
            return
        self._calls[call] = keys
        self._calls.move_to_end(call)
        while len(self._calls) > MAX_CALLS:
            self._calls.popitem(last=False)
