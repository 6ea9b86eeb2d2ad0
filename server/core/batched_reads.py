"""One connection shared by many query runs at once, their reads sent together.

A live-query tick runs a batch of queries at the same time on one connection of its snapshot
(tick_runs.py). Each run reads through a `BatchedReads` standing in for the connection: a
document read (an index range, a get by id) waits for the loop to go round once with no
other read arriving, then all waiting reads of one kind go to PostgreSQL as one statement (the
kind's batched form, `TableSql.batched`: one array per parameter, a LATERAL join) and each run
gets exactly the rows its own statement would have returned, in the same snapshot. Read sets
are recorded by the runs as before (query.py, documents.py): they are as exact as when each
run sent its own statement. What costs the CPU of a tick's re-runs on a small query is the
statements themselves (each one a system call to write it, a wake-up of the backend, a reply
to parse): N runs of a query that reads twice cost two statements instead of 2N.

Any other statement goes to the connection as it is, one at a time with the batches.
"""

from __future__ import annotations

import asyncio
from typing import Any


class BatchedReads:
    """Stands in for an asyncpg connection in a run's Transaction (its `fetch`, `fetchrow`,
    `fetchval` and `execute`); `batched` maps a statement to its batched form."""

    def __init__(self, conn: Any, batched: dict[str, str]) -> None:
        self._conn, self._batched = conn, batched
        self._loop = asyncio.get_running_loop()  # once: each call asks getpid(), a system call
        self._lock = asyncio.Lock()  # one statement at a time on the connection
        self._waiting: dict[str, list[tuple[tuple[Any, ...], bool, asyncio.Future[Any]]]] = {}
        self._count = 0  # reads waiting, as the last look saw them
        self._looking = False  # a look is scheduled
        self._sends: set[asyncio.Task[None]] = set()
        self.statements = 0  # sent on the connection, batches and others

    async def fetch(self, query: str, *args: Any) -> Any:
        if query in self._batched:
            return await self._wait(query, args, one=False)
        return await self._direct("fetch", query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        if query in self._batched:
            return await self._wait(query, args, one=True)
        return await self._direct("fetchrow", query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._direct("fetchval", query, *args)

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._direct("execute", query, *args)

    async def idle(self) -> None:
        """Wait until nothing is being sent on the connection (and nothing waits to be)."""
        while self._sends or self._waiting:
            if self._sends:
                await asyncio.wait(set(self._sends))
            else:
                await asyncio.sleep(0)

    def cancel(self) -> None:
        """Stop sending (the connection is not to be used any more)."""
        for task in self._sends:
            task.cancel()

    async def _direct(self, method: str, query: str, *args: Any) -> Any:
        async with self._lock:
            self.statements += 1
            return await getattr(self._conn, method)(query, *args)

    def _wait(self, query: str, args: tuple[Any, ...], one: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._waiting.setdefault(query, []).append((args, one, future))
        if not self._looking:
            self._looking = True
            self._count = -1
            self._loop.call_soon(self._look)
        return future

    def _look(self) -> None:
        """Send what waits once a turn of the loop brought no more (every run that could read
        has read)."""
        count = sum(len(w) for w in self._waiting.values())
        if count != self._count:
            self._count = count
            self._loop.call_soon(self._look)
            return
        self._looking = False
        waiting, self._waiting = self._waiting, {}
        task = self._loop.create_task(self._send(waiting))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, waiting: dict[str, list[tuple[tuple[Any, ...], bool, asyncio.Future[Any]]]]) -> None:
        try:
            async with self._lock:
                for query, reads in waiting.items():
                    if all(future.done() for _, _, future in reads):
                        continue  # their runs were cancelled
                    try:
                        rows = await self._statement(query, reads)
                    except Exception as exc:
                        for _, _, future in reads:
                            if not future.done():
                                future.set_exception(exc)
                        continue
                    each: list[list[Any]] = [[] for _ in reads]
                    if len(reads) == 1:
                        each[0] = rows
                    else:
                        for row in rows:
                            each[row["i"] - 1].append(row)
                    for (_, one, future), got in zip(reads, each, strict=True):
                        if not future.done():
                            future.set_result((got[0] if got else None) if one else got)
        finally:  # cancelled: so are the reads not answered
            for reads in waiting.values():
                for _, _, future in reads:
                    future.cancel()

    async def _statement(self, query: str, reads: list[tuple[tuple[Any, ...], bool, asyncio.Future[Any]]]) -> Any:
        """The rows of `reads` of `query`: its own statement for one, the batched form for more."""
        self.statements += 1
        if len(reads) == 1:
            return await self._conn.fetch(query, *reads[0][0])
        columns = [list(column) for column in zip(*(args for args, _, _ in reads), strict=True)]
        return await self._conn.fetch(self._batched[query], *columns)
