"""One view of a `ripple serve --workers N` group for admins: the log stream and the metrics of
every worker, whichever worker a request reached (docs/operations.md#workers).

Each worker keeps its own log stream and metrics in memory (server/core/log_stream.py,
server/core/metrics.py); nothing is shared. A worker of a group also answers its siblings on a
Unix socket in the supervisor's private folder (RIPPLE_WORKERS_DIR, mode 0700):
`worker-<number>-<pid>.sock`, one JSON line asked, one answered:

    {"op": "logs", "cursor": 12 | null, "limit": 1000, "timeout": 30}  -> a log_stream.Page
    {"op": "metrics"}                                                  -> {"text": <exposition>}

`GET /_ripple/logs` on any worker reads every worker's stream and merges the entries by time,
each with `worker` (its number). Its cursor is then a string, `<pid>.<seq>-<pid>.<seq>...`: a
position in each process's stream, by process id, so a worker restarted (a new pid) is read from
its first entry, and the stream of one that is gone is no longer asked. Clients pass it back as
they got it (it is opaque; `0` still means everything kept). A long poll waits on every worker
at once and answers when the first has entries.

`GET /_ripple/metrics` sums each series over the workers (counters, and gauges such as the
websocket clients), takes the largest `ripple_live_query_ts`, leaves out `ripple_worker`, and adds
`ripple_workers_answering`. A sibling that does not answer (starting, stopping, killed) is left
out of that answer: the metrics say how many did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from server.core.metrics import exposition_number
from server.core.runtime import Runtime
from server.workers import WORKER_ENV, WORKERS_DIR_ENV

log = logging.getLogger("ripple.workers")

ASK_TIMEOUT = 5.0  # seconds a sibling has to answer what does not wait (a page, metrics)
MAX_LINE = 64 * 1024 * 1024  # one page of 10,000 entries with their lines
# The group's value is the largest worker's, not the sum. A long poll of the group's logs waits on
# every worker's stream, so each worker's ripple_log_readers counts every poll.
MAX_GAUGES = {"ripple_live_query_ts", "ripple_log_readers"}
OWN_ONLY = {"ripple_worker"}  # a worker's own number: no group value
CURSOR = re.compile(r"^\d+\.\d+(-\d+\.\d+)*$")
SOCKET = re.compile(r"^worker-(\d+)-(\d+)\.sock$")


class BadCursor(ValueError):
    pass


def parse_cursor(text: str | None) -> dict[int, int] | int | None:
    """None (from now on), a number (the same position in every stream: `0`, everything kept), or
    {pid: seq}. BadCursor names what is wrong."""
    if text is None or text == "":
        return None
    if text.isdigit():
        return int(text)
    if not CURSOR.match(text) or len(text) > 10_000:
        raise BadCursor(f"`cursor` must be a cursor a previous answer gave, not {text[:40]!r}")
    return {int(pid): int(seq) for pid, seq in (part.split(".") for part in text.split("-"))}


def format_cursor(positions: dict[int, int]) -> str:
    return "-".join(f"{pid}.{seq}" for pid, seq in sorted(positions.items())) or "0"


class WorkerGroup:
    """This worker's place in its group: serves its siblings, asks them."""

    def __init__(self, runtime: Runtime, folder: Path, number: int) -> None:
        self.runtime, self.folder, self.number = runtime, folder, number
        self.pid = os.getpid()
        self.path = folder / f"worker-{number}-{self.pid}.sock"
        self._server: asyncio.AbstractServer | None = None

    @classmethod
    def from_env(cls, runtime: Runtime) -> WorkerGroup | None:
        """This process's group, when it is a worker of `ripple serve --workers N` (N > 1)."""
        folder, number = os.environ.get(WORKERS_DIR_ENV), os.environ.get(WORKER_ENV)
        return cls(runtime, Path(folder), int(number)) if folder and number else None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_unix_server(self._answer, path=str(self.path), limit=MAX_LINE)
        except OSError as exc:  # e.g. a TMPDIR too long for a socket's path: the others cannot ask this one
            log.warning("worker %d cannot serve its siblings on %s (%s): the group's logs and metrics leave it out",
                        self.number, self.path, exc)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                self.path.unlink()  # our own path: the pid in its name is this process's

    # -- answering a sibling --------------------------------------------------------------------

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = orjson.loads(await reader.readline())
            if request.get("op") == "logs":
                read = asyncio.ensure_future(self.runtime.log_stream.read(request["cursor"], request["limit"], request["timeout"]))
                gone = asyncio.ensure_future(reader.read())  # the asker hung up: stop waiting for it
                await asyncio.wait({read, gone}, return_when=asyncio.FIRST_COMPLETED)
                gone.cancel()
                if not read.done():
                    read.cancel()
                    return
                page = read.result()
                answer: dict[str, Any] = {**page.to_json(), "worker": self.number}
            else:
                answer = {"text": self.runtime.metrics.render()}
            writer.write(orjson.dumps(answer) + b"\n")
            await writer.drain()
        except (OSError, ValueError, KeyError, asyncio.IncompleteReadError) as exc:
            log.debug("a sibling's request failed: %s", exc)
        finally:
            writer.close()

    # -- asking every worker ----------------------------------------------------------------------

    def _members(self) -> dict[int, Path]:
        """pid -> socket of every worker serving now (this one included)."""
        out = {}
        with contextlib.suppress(OSError):
            for path in self.folder.iterdir():
                if (m := SOCKET.match(path.name)) is not None:
                    out[int(m.group(2))] = path
        out[self.pid] = self.path
        return out

    async def _ask(self, path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """A sibling's answer, or None when it is gone or does not answer in time."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
                writer.write(orjson.dumps(request) + b"\n")
                await writer.drain()
                answer: dict[str, Any] = orjson.loads(await reader.readline())
                return answer
        except (OSError, ValueError, TimeoutError) as exc:
            log.debug("worker socket %s did not answer: %s", path.name, exc)
            return None
        finally:
            if writer is not None:
                writer.close()

    async def _page(self, pid: int, path: Path, cursor: int | None, limit: int, timeout: float) -> dict[str, Any] | None:
        if pid == self.pid:
            page = await self.runtime.log_stream.read(cursor, limit, timeout)
            return {**page.to_json(), "worker": self.number}
        return await self._ask(path, {"op": "logs", "cursor": cursor, "limit": limit, "timeout": timeout},
                               timeout + ASK_TIMEOUT)

    async def logs(self, cursor: dict[int, int] | int | None, limit: int, timeout: float) -> dict[str, Any]:
        """The group's answer to `GET /_ripple/logs` (logs_http.py has read the parameters)."""
        members = self._members()
        pages: dict[int, dict[str, Any]] = {}
        if cursor is None:  # from now on: where every stream is now, with nothing after it yet
            cursor = {pid: page["cursor"] for pid, page in (await self._gather(members, dict.fromkeys(members), limit)).items()}
            positions = {pid: cursor.get(pid, 0) for pid in members}
        else:
            if isinstance(cursor, int):
                cursor = dict.fromkeys(members, cursor)
            positions = {pid: cursor.get(pid, 0) for pid in members}  # a worker not in the cursor is new: all of it
            pages = await self._gather(members, positions, limit)
        if not any(page["entries"] for page in pages.values()) and timeout > 0:
            pages = await self._first_with_entries(members, positions, limit, timeout)
        timed = sorted(((entry["timestamp"], pid, entry) for pid, page in pages.items() for entry in page["entries"]),
                       key=lambda t: (t[0], t[1], t[2]["seq"]))
        kept = timed[:limit]
        dropped = 0
        for pid in {pid for _, pid, _ in kept}:
            positions[pid] = max(entry["seq"] for _, p, entry in kept if p == pid)
            dropped += pages[pid]["dropped"]
        return {"entries": [{**entry, "worker": pages[pid]["worker"]} for _, pid, entry in kept],
                "cursor": format_cursor(positions), "dropped": dropped}

    async def _gather(self, members: dict[int, Path], positions: Mapping[int, int | None],
                      limit: int) -> dict[int, dict[str, Any]]:
        """Every worker's page after its position (None: from now on), without waiting."""
        pids = list(members)
        answers = await asyncio.gather(*(self._page(pid, members[pid], positions[pid], limit, 0.0) for pid in pids))
        return {pid: page for pid, page in zip(pids, answers, strict=True) if page is not None}

    async def _first_with_entries(self, members: dict[int, Path], positions: dict[int, int], limit: int,
                                  timeout: float) -> dict[int, dict[str, Any]]:
        """Wait on every worker's stream at once; the first page with entries (or none by the timeout)."""
        waits = {asyncio.ensure_future(self._page(pid, path, positions[pid], limit, timeout)): pid
                 for pid, path in members.items()}
        pending = set(waits)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                found = {waits[task]: page for task in done if (page := task.result()) is not None and page["entries"]}
                if found:
                    return found
            return {}
        finally:
            for task in pending:
                task.cancel()  # closes the connection: the sibling stops waiting

    async def metrics(self) -> str:
        """The group's exposition: each series summed over the workers that answered."""
        members = self._members()

        async def text(pid: int, path: Path) -> str | None:
            if pid == self.pid:
                return self.runtime.metrics.render()
            answer = await self._ask(path, {"op": "metrics"}, ASK_TIMEOUT)
            return None if answer is None else str(answer["text"])

        texts = [t for t in await asyncio.gather(*(text(pid, path) for pid, path in members.items())) if t is not None]
        return merge_expositions(texts)


def merge_expositions(texts: list[str]) -> str:
    """Prometheus text expositions of several processes as one: families in first-seen order, each
    series summed (MAX_GAUGES: the largest), OWN_ONLY left out, plus ripple_workers_answering."""
    headers: dict[str, list[str]] = {}
    series: dict[str, dict[str, float]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                family = parts[2]
                if family not in OWN_ONLY:
                    lines = headers.setdefault(family, [])
                    if line not in lines:
                        lines.append(line)
                    series.setdefault(family, {})
                continue
            if not line:
                continue
            key, _, raw = line.rpartition(" ")
            name = key.partition("{")[0]
            if not (name == family or name.startswith(family + "_")):
                family = name  # a series with no header of its own
            if family in OWN_ONLY:
                continue
            values = series.setdefault(family, {})
            value = float(raw)
            old = values.get(key)
            values[key] = value if old is None else max(old, value) if family in MAX_GAUGES else old + value
    out: list[str] = []
    for family, values in series.items():
        out.extend(headers.get(family, []))
        out.extend(f"{key} {exposition_number(value)}" for key, value in values.items())
    out += ["# HELP ripple_workers_answering Workers of this `ripple serve --workers N` group whose metrics are summed here",
            "# TYPE ripple_workers_answering gauge", f"ripple_workers_answering {len(texts)}"]
    return "\n".join(out) + "\n"

