"""An unaffected client's update latency while another client abuses the server, per source tree.

What is measured
----------------
Client B is a websocket speaking the Convex sync protocol, subscribed to `abuse:get("b")`.
A probe loop sends `abuse:inc("b")` through `POST /api/mutation` every `--interval` (0.2 s),
open loop (a probe does not wait for the previous one), `--probes` (30) times per scenario. A
probe's latency is the time from sending its mutation to B receiving a Transition whose value of
`get("b")` is at least the value that mutation returned (the counter only grows, so a coalesced
update carrying a later value delivers it too); it includes the mutation's own round trip. A
probe whose mutation failed, or whose value B had not seen `--cap` (30) seconds after it was
sent, is a timeout; percentiles count timeouts as infinitely slow (shown as ">cap", null in the
JSON). B and the probe loop are this process; the mutation's round trip ("mutation p50") is
reported apart, so a blocked server shows up there too.

Scenarios (each on a fresh server process, with fresh connections; the abuser starts after B's
first result and one unmeasured warm-up probe, and the probes start once the abuser is going:
its queries delivered their first results, at most 20 s; the abuser stops and disconnects at
the end of the scenario):

  quiet          no abuser: the floor.
  slow-live      client A subscribes 2 x slow_get("b", 3 s, tag i): they read the counter the
                 probes write, so every probe write re-runs them.
  new-slow       client A subscribes a new slow_get("a", 3 s, tag i) every 0.5 s and
                 unsubscribes all but the last 2; nothing writes what they read.
  numerous       client A subscribes 40 x slow_get("b", 0.05 s, tag i).
  blocking-live  client A subscribes 2 x busy_get("b", 2 s, tag i): a busy loop in a query,
                 holding the event loop without awaiting.
  flood          a raw websocket (hand-made frames, 4 KiB receive buffer) sends Connect and 300
                 Mutation big(1,000,000) and never reads. After the probes it stays connected
                 until the server has run all 300 (counted in its mutation-result table), or
                 none for 3 s, at most 30 s; then it disconnects. Server RSS (VmRSS) is
                 recorded before the flood, at its peak (sampled every 0.1 s), and 5 s after
                 the flooder disconnected.
  big-body       one client posts 16,000,000-byte JSON bodies (`inc` with `name` an array of
                 8 M small ints, just under the default 16 MiB body limit) back to back, each on
                 a new connection, waiting for each answer.

Server RSS before / peak is recorded for every scenario, and the CPU used over the probe window
(% of one core) by the server and by other processes except PostgreSQL and this one: a busy
neighbour on a shared machine shows there, as does the machine's busy share.

Trees
-----
`--tree NAME=PATH` (repeatable; default: this checkout, named "this") names source trees to
compare in one invocation, e.g. `--tree before=/path/to/old --tree after=/work/main`. Every
server runs `python -m server.cli serve` with cwd = PYTHONPATH = the tree, with the interpreter
`--python` (default: this one; the trees share its installed packages), the app
bench/abuse_app/ of THIS checkout (written against the public `server` API so every tree loads
it), its PostgreSQL schema `bench_abuse_<random>` (fresh per tree and run, dropped afterwards)
and no inherited RIPPLE_* variables: each tree's defaults. Before a tree's first server the
script checks where `server` is imported from with that environment, and after each start it
asks the server itself (the query `abuse:server_file` returns `server.__file__`): a mismatch
stops the run. Each tree is recorded with its git commit, whether server/ differs from it, and a
sha256 over its server/ sources.

Scenarios run per tree in the order given, trees interleaved per run (`--runs`, default 1);
the tables show, per tree and scenario, the median over runs of p50 / p90 / max and the sum of
timeouts, and each later tree against the first ("after / before"). Results go to
bench/results/abuse-<UTC timestamp>.json with the machine and every probe's figures.

Everything runs on this machine (PostgreSQL, the servers, this process); the machine's busy
share over each probe window is recorded. Every wait is capped: the script always finishes,
and it stops its processes and drops its schemas on errors, Ctrl-C and SIGTERM.

    python bench/abuse.py [--tree before=/path/to/old --tree after=/work/main]
                          [--scenarios quiet,slow-live,...] [--probes 30] [--runs 1]
                          [--database-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from common import (
    CLK_TCK,
    DEFAULT_DB,
    HOST,
    ROOT,
    Processes,
    command_output,
    describe_machine,
    free_port,
    machine_busy_ticks,
    percentile,
    process_ticks,
    run_cancellable,
    tail,
    wait_ready,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

SCRIPT = Path(__file__).resolve()
APP_DIR = SCRIPT.parent / "abuse_app"
RESULTS_DIR = SCRIPT.parent / "results"
SCENARIOS = ("quiet", "slow-live", "new-slow", "numerous", "blocking-live", "flood", "big-body")
READY_CAP = 20.0  # seconds an abuser may take to get going (its first results)
STOP_CAP = 10.0  # seconds a server may take to stop on SIGTERM before it is killed
FLOOD_MUTATIONS = 300
FLOOD_RESULT_BYTES = 1_000_000
FLOOD_RCVBUF = 4096
RSS_SETTLE = 5.0  # seconds after the flooder disconnects
FLOOD_STALL = 3.0
FLOOD_HOLD_CAP = 30.0
BIG_BODY_BYTES = 16_000_000  # under the default 16 MiB (16,777,216) limit: the server parses it
NEW_SLOW_PERIOD = 0.5
NEW_SLOW_KEEP = 2


# ---------------------------------------------------------------------------------------------
# Loopback clients: HTTP, the sync protocol, a raw websocket that never reads
# ---------------------------------------------------------------------------------------------

async def http_post(port: int, path: str, payload: bytes, timeout: float) -> tuple[int, bytes]:
    """POST `payload` (JSON) on a new connection; (status, body). Raises on errors and after
    `timeout` seconds."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode())
            writer.write(payload)
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2:
        raise ConnectionError(f"no HTTP response ({len(response)} bytes)")
    return int(status_line[1]), body


def call_body(path: str, args: dict[str, Any]) -> bytes:
    return orjson.dumps({"path": path, "args": args, "format": "json"})


def connect_message() -> str:
    return orjson.dumps({"type": "Connect", "sessionId": secrets.token_hex(16), "connectionCount": 0,
                         "lastCloseReason": "InitialConnect", "clientTs": int(time.time() * 1000)}).decode()


class SyncClient:
    """A sync-protocol websocket client that reads every message and keeps, per query, its latest
    result and (for watched queries) every value with the time it arrived."""

    def __init__(self) -> None:
        self.ws: ClientConnection | None = None
        self.query_set_version = 0
        self.next_query_id = 0
        self.latest: dict[int, tuple[bool, Any]] = {}  # query id -> (ok, value or error message)
        self.history: dict[int, list[tuple[float, Any]]] = {}  # watched query id -> [(arrival, value)]
        self.failures = 0  # QueryFailed modifications received
        self.transitions = 0
        self.closed: str | None = None  # why the connection ended, when it did
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        self.ws = await connect(f"ws://{HOST}:{port}/api/sync", max_size=None, compression=None,
                                open_timeout=10, close_timeout=2, ping_interval=None)
        await self.ws.send(connect_message())
        self._reader = asyncio.create_task(self._read())

    async def modify(self, add: Sequence[tuple[str, dict[str, Any]]] = (), remove: Sequence[int] = (),
                     watch: bool = False) -> list[int]:
        """Add and remove subscriptions in one ModifyQuerySet; the new query ids."""
        assert self.ws is not None
        ids, mods = [], []
        for path, args in add:
            ids.append(self.next_query_id)
            mods.append({"type": "Add", "queryId": self.next_query_id, "udfPath": path, "args": [args]})
            if watch:
                self.history[self.next_query_id] = []
            self.next_query_id += 1
        mods += [{"type": "Remove", "queryId": q} for q in remove]
        base, self.query_set_version = self.query_set_version, self.query_set_version + 1
        await self.ws.send(orjson.dumps({"type": "ModifyQuerySet", "baseVersion": base,
                                         "newVersion": self.query_set_version, "modifications": mods}).decode())
        return ids

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                arrived = time.perf_counter()
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind == "Transition":
                    self.transitions += 1
                    for mod in message.get("modifications", ()):
                        query_id = mod.get("queryId")
                        if mod.get("type") == "QueryUpdated":
                            self.latest[query_id] = (True, mod.get("value"))
                            if query_id in self.history:
                                self.history[query_id].append((arrived, mod.get("value")))
                        elif mod.get("type") == "QueryFailed":
                            self.failures += 1
                            self.latest[query_id] = (False, mod.get("errorMessage"))
                elif kind == "FatalError":
                    self.closed = f"FatalError: {message.get('error')}"
            self.closed = self.closed or "closed by the server"
        except (WebSocketException, OSError, ValueError) as exc:
            self.closed = self.closed or f"{type(exc).__name__}: {exc}"

    def value(self, query_id: int) -> Any:
        ok, value = self.latest.get(query_id, (False, None))
        return value if ok else None

    async def wait_results(self, query_ids: list[int], timeout: float) -> bool:
        """Wait until every query in `query_ids` has a result (or failed); False after `timeout`."""
        deadline = time.perf_counter() + timeout
        while any(q not in self.latest for q in query_ids):
            if self.closed or time.perf_counter() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)


def ws_frame(text: str) -> bytes:
    """One masked text frame, as a client sends it (RFC 6455)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + mask + masked


class RawWebSocket:
    """A websocket opened by hand with a small receive buffer, that sends and never reads (the
    stream buffers at most a few KiB; then the kernel's window closes)."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FLOOD_RCVBUF)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        reader, self.writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(f"GET /api/sync HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    async def send(self, frames: list[str]) -> None:
        assert self.writer is not None
        for text in frames:
            self.writer.write(ws_frame(text))
        await self.writer.drain()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


# ---------------------------------------------------------------------------------------------
# The server process: RSS and CPU from /proc
# ---------------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class CpuWindow:
    """CPU use from now until `stop()`, in % of one core: the server; everything else except
    this process and PostgreSQL (on a shared machine: the neighbours; PostgreSQL's share cannot be
    told apart from theirs here); and the machine's busy share in % of all cores."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.t0, self.ticks0, self.busy0 = time.perf_counter(), process_ticks(), machine_busy_ticks()

    def stop(self) -> dict[str, Any]:
        wall, ticks1, busy1 = time.perf_counter() - self.t0, process_ticks(), machine_busy_ticks()
        used = {pid: t - self.ticks0.get(pid, ("", 0))[1] for pid, (_, t) in ticks1.items()}
        ours = {self.server_pid, os.getpid()}
        others = sum(t for pid, t in used.items() if pid not in ours and ticks1[pid][0] != "postgres")
        total = busy1[1] - self.busy0[1]
        return {"probe_window_s": round(wall, 2),
                "server_cpu_pct": round(100 * used.get(self.server_pid, 0) / CLK_TCK / wall, 1),
                "others_cpu_pct": round(100 * others / CLK_TCK / wall, 1),
                "machine_busy_pct": round(100 * (busy1[0] - self.busy0[0]) / total, 1) if total else None}


class RssSampler:
    """The peak VmRSS of a process, sampled every 0.1 s while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid) or 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid) or 0.0)
            await asyncio.sleep(0.1)

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, rss_mb(self.pid) or 0.0)
        return self.peak


# ---------------------------------------------------------------------------------------------
# Abusers: start, get going, stop; each reports what it did
# ---------------------------------------------------------------------------------------------

class Abuser:
    """No abuse (the `quiet` scenario); the base of the others."""

    async def start(self, port: int) -> None:
        pass

    async def ready(self) -> bool:
        return True

    async def finish(self) -> None:
        """Called once the probes are done, before `stop`."""

    async def stop(self) -> dict[str, Any]:
        return {}


class LiveQueries(Abuser):
    """Client A holding `count` subscriptions of `path`(name, seconds, tag i)."""

    def __init__(self, path: str, name: str, seconds: float, count: int) -> None:
        self.adds = [(path, {"name": name, "seconds": seconds, "tag": i}) for i in range(count)]
        self.client = SyncClient()
        self.ids: list[int] = []

    async def start(self, port: int) -> None:
        await self.client.connect(port)
        self.ids = await self.client.modify(self.adds)

    async def ready(self) -> bool:
        return await self.client.wait_results(self.ids, READY_CAP)

    async def stop(self) -> dict[str, Any]:
        await self.client.close()
        return {"subscriptions": len(self.ids), "with_result": sum(q in self.client.latest for q in self.ids),
                "transitions": self.client.transitions, "query_failures": self.client.failures,
                "disconnected": self.client.closed}


class NewSlow(Abuser):
    """Client A subscribing a new slow query every NEW_SLOW_PERIOD, keeping the last few."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.client = SyncClient()
        self.live: list[int] = []
        self.added = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self, port: int) -> None:
        await self.client.connect(port)
        self._task = asyncio.create_task(self._churn())

    async def _churn(self) -> None:
        while not self.client.closed:
            excess = max(0, len(self.live) - (NEW_SLOW_KEEP - 1))  # after this add, NEW_SLOW_KEEP remain
            remove, self.live = self.live[:excess], self.live[excess:]
            self.live += await self.client.modify([("abuse:slow_get", {"name": "a", "seconds": self.seconds, "tag": self.added})], remove)
            self.added += 1
            await asyncio.sleep(NEW_SLOW_PERIOD)

    async def ready(self) -> bool:
        await asyncio.sleep(NEW_SLOW_PERIOD)
        return self.added > 0

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.client.close()
        return {"subscribed": self.added, "results": len(self.client.latest), "transitions": self.client.transitions,
                "query_failures": self.client.failures, "disconnected": self.client.closed}


async def flood_mutations_run(admin: Any, schema: str) -> int | None:
    """How many websocket mutations `abuse:big` the server ran and stored the result of (None
    when the table has another shape in this tree)."""
    with contextlib.suppress(Exception):
        return int(await admin.fetchval(
            f'SELECT count(*) FROM "{schema}"._ripple_mutation_results WHERE function = $1', "abuse:big"))
    return None


class Flood(Abuser):
    """A raw websocket sending FLOOD_MUTATIONS big(FLOOD_RESULT_BYTES) and never reading. It
    stays connected after the probes until the server has run all its mutations, or has run none
    for FLOOD_STALL seconds (it refused or stalled them), at most FLOOD_HOLD_CAP seconds: so the
    RSS peak does not depend on how long the probes took."""

    def __init__(self, admin: Any, schema: str) -> None:
        self.admin, self.schema = admin, schema
        self.ws = RawWebSocket()
        self.sent = 0
        self.error: str | None = None
        self.held_s = 0.0
        self.run_at_disconnect: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, port: int) -> None:
        await self.ws.open(port)
        frames = [connect_message()] + [
            orjson.dumps({"type": "Mutation", "requestId": i, "udfPath": "abuse:big", "args": [{"n": FLOOD_RESULT_BYTES}]}).decode()
            for i in range(FLOOD_MUTATIONS)
        ]
        self._task = asyncio.create_task(self._send(frames))

    async def _send(self, frames: list[str]) -> None:
        try:
            await self.ws.send(frames)
            self.sent = len(frames) - 1
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    async def finish(self) -> None:
        t0 = last_change = time.perf_counter()
        last = await flood_mutations_run(self.admin, self.schema)
        while last is not None and last < FLOOD_MUTATIONS and time.perf_counter() - t0 < FLOOD_HOLD_CAP:
            await asyncio.sleep(0.25)
            count = await flood_mutations_run(self.admin, self.schema)
            if count != last:
                last, last_change = count, time.perf_counter()
            elif time.perf_counter() - last_change > FLOOD_STALL:
                break
        self.held_s = round(time.perf_counter() - t0, 2)
        self.run_at_disconnect = last

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.ws.close()
        return {"mutations_sent": self.sent, "result_bytes_each": FLOOD_RESULT_BYTES, "error": self.error,
                "held_after_probes_s": self.held_s, "mutations_run_at_disconnect": self.run_at_disconnect}


class BigBodies(Abuser):
    """Back-to-back POSTs of a BIG_BODY_BYTES JSON body, one connection each."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.statuses: Counter[str] = Counter()
        self.seconds: list[float] = []
        self._task: asyncio.Task[None] | None = None
        prefix, suffix = b'{"path":"abuse:inc","format":"json","args":{"name":[', b"1]}}"
        ints = (BIG_BODY_BYTES - len(prefix) - len(suffix)) // 2
        self.body = prefix + b"1," * ints + suffix

    async def start(self, port: int) -> None:
        self._task = asyncio.create_task(self._post(port))

    async def _post(self, port: int) -> None:
        while True:
            t0 = time.perf_counter()
            try:
                status, _ = await http_post(port, "/api/mutation", self.body, self.cap)
                self.statuses[str(status)] += 1
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
            self.seconds.append(time.perf_counter() - t0)

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {"bodies_answered": len(self.seconds), "body_bytes": len(self.body), "answers": dict(self.statuses),
                "answer_s_p50": percentile(sorted(self.seconds), 50) if self.seconds else None}


def make_abuser(scenario: str, cap: float, admin: Any, schema: str) -> Abuser:
    if scenario == "quiet":
        return Abuser()
    if scenario == "slow-live":
        return LiveQueries("abuse:slow_get", "b", 3.0, 2)
    if scenario == "new-slow":
        return NewSlow(3.0)
    if scenario == "numerous":
        return LiveQueries("abuse:slow_get", "b", 0.05, 40)
    if scenario == "blocking-live":
        return LiveQueries("abuse:busy_get", "b", 2.0, 2)
    if scenario == "flood":
        return Flood(admin, schema)
    if scenario == "big-body":
        return BigBodies(cap)
    raise ValueError(scenario)


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------

INC_B = call_body("abuse:inc", {"name": "b"})


@dataclass
class Probe:
    sent: float
    value: int | None = None
    answered: float | None = None  # when the mutation's HTTP response arrived
    error: str | None = None
    latency: float | None = None  # sent -> B received the value (None: a timeout)


async def send_probe(port: int, probe: Probe, cap: float) -> None:
    try:
        status, body = await http_post(port, "/api/mutation", INC_B, cap)
        probe.answered = time.perf_counter()
        answer = orjson.loads(body)
        if status == 200 and answer.get("status") == "success":
            probe.value = int(answer["value"])
        else:
            probe.error = f"HTTP {status}: {body[:200].decode(errors='replace')}"
    except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
        probe.error = type(exc).__name__


async def run_probes(port: int, b: SyncClient, query_id: int, n: int, interval: float, cap: float) -> list[Probe]:
    """`n` probes, one every `interval` s (open loop); each resolved against B's history."""
    probes: list[Probe] = []
    tasks = []
    start = time.perf_counter()
    for k in range(n):
        await asyncio.sleep(max(0.0, start + k * interval - time.perf_counter()))
        probe = Probe(time.perf_counter())
        probes.append(probe)
        tasks.append(asyncio.create_task(send_probe(port, probe, cap)))
    await asyncio.gather(*tasks)
    target = max((p.value for p in probes if p.value is not None), default=None)
    deadline = probes[-1].sent + cap
    while target is not None and not b.closed and time.perf_counter() < deadline:
        seen = b.value(query_id)
        if isinstance(seen, (int, float)) and seen >= target:
            break
        await asyncio.sleep(0.02)
    history = b.history[query_id]
    for probe in probes:
        if probe.value is None:
            continue
        arrived = next((t for t, v in history if isinstance(v, (int, float)) and v >= probe.value), None)
        if arrived is not None and arrived - probe.sent <= cap:
            probe.latency = arrived - probe.sent
    return probes


def probe_figures(probes: list[Probe]) -> dict[str, Any]:
    """p50 / p90 / max in ms over all probes, timeouts counted as infinite (None in the result)."""
    lat = sorted(p.latency if p.latency is not None else math.inf for p in probes)
    rtt = sorted(p.answered - p.sent for p in probes if p.answered is not None)

    def ms(v: float) -> float | None:
        return None if math.isinf(v) or math.isnan(v) else round(v * 1e3, 1)

    return {
        "probes": len(probes),
        "timeouts": sum(p.latency is None for p in probes),
        "mutation_errors": sum(p.error is not None for p in probes),
        "p50_ms": ms(percentile(lat, 50)),
        "p90_ms": ms(percentile(lat, 90)),
        "max_ms": ms(lat[-1]) if lat else None,
        "mutation_p50_ms": ms(percentile(rtt, 50)),
        "mutation_max_ms": ms(rtt[-1]) if rtt else None,
    }


# ---------------------------------------------------------------------------------------------
# Trees and their servers
# ---------------------------------------------------------------------------------------------

@dataclass
class Tree:
    name: str
    path: Path
    info: dict[str, Any] = field(default_factory=dict)


def tree_digest(server_dir: Path) -> str:
    """sha256 over the files under `server_dir` (not __pycache__), with their relative paths."""
    h = hashlib.sha256()
    for path in sorted(p for p in server_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(server_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def server_env(tree: Path, database_url: str, schema: str) -> dict[str, str]:
    """This environment without DATABASE_URL and RIPPLE_* (each tree runs its defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_") and k != "DATABASE_URL"}
    env.update(PYTHONPATH=str(tree), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
               DATABASE_URL=database_url, RIPPLE_DB_SCHEMA=schema)
    return env


def is_tree_server(tree: Tree, server_file: str) -> bool:
    """Is `server_file` (a `server.__file__`) the tree's server/__init__.py?"""
    return bool(server_file) and Path(server_file).resolve() == (tree.path / "server" / "__init__.py").resolve()


def check_tree(tree: Tree, python: str, database_url: str) -> None:
    """Fail unless `python` with the servers' environment imports `server` from the tree; record
    the tree's commit and the digest of its server/ sources."""
    expected = tree.path / "server" / "__init__.py"
    if not expected.is_file():
        raise SystemExit(f"--tree {tree.name}={tree.path}: no server/__init__.py there")
    out = subprocess.run([python, "-c", "import server; print(server.__file__)"], cwd=tree.path, capture_output=True,
                         text=True, timeout=60, env=server_env(tree.path, database_url, "unused"))
    imported = out.stdout.strip()
    if out.returncode != 0 or not is_tree_server(tree, imported):
        raise SystemExit(f"--tree {tree.name}: {python} imports server from {imported or out.stderr.strip()[-300:]!r}, "
                         f"not {expected}")
    tree.info = {
        "path": str(tree.path),
        "git_commit": command_output(["git", "rev-parse", "HEAD"], cwd=tree.path),
        "git_dirty_server": bool(command_output(["git", "status", "--porcelain", "--", "server"], cwd=tree.path)),
        "server_sha256": tree_digest(tree.path / "server"),
        "python": python,
        "server_file": imported,
    }


async def start_server(tree: Tree, processes: Processes, python: str, database_url: str,
                       schema: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = processes.start(f"{tree.name}-server", [python, "-m", "server.cli", "serve", "--port", str(port),
                                                  "--dir", str(APP_DIR)],
                           env=server_env(tree.path, database_url, schema), cwd=tree.path)
    await wait_ready(proc, port, "/_ripple/health")
    status, body = await http_post(port, "/api/query", call_body("abuse:server_file", {}), 30)
    served_from = orjson.loads(body).get("value") if status == 200 else None
    if not isinstance(served_from, str) or not is_tree_server(tree, served_from):
        raise RuntimeError(f"the server for tree {tree.name} imported server from {served_from!r} ({status} {body[:200]!r})")
    return proc, port


def log_summary(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """How many WARNING / ERROR lines and tracebacks the server logged, the first few of those
    lines, and the exceptions that ended the tracebacks, with counts (all shortened)."""
    try:
        lines = proc.log_path.read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
    except OSError:
        return {}
    flagged = [line for line in lines if " WARNING " in line or " ERROR " in line]
    exceptions: Counter[str] = Counter()
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            if not line.startswith(("During handling", "The above exception")):
                exceptions[line[:200]] += 1
            in_traceback = False
    return {"warnings": sum(" WARNING " in line for line in flagged), "errors": sum(" ERROR " in line for line in flagged),
            "tracebacks": sum(line.startswith("Traceback") for line in lines),
            "first": [line[:300] for line in flagged[:5]], "exceptions": dict(exceptions.most_common(5))}


# ---------------------------------------------------------------------------------------------
# One scenario
# ---------------------------------------------------------------------------------------------

async def run_scenario(scenario: str, tree: Tree, processes: Processes, args: argparse.Namespace,
                       schema: str, admin: Any) -> dict[str, Any]:
    proc, port = await start_server(tree, processes, args.python, args.database_url, schema)
    b = SyncClient()
    abuser = make_abuser(scenario, args.cap, admin, schema)
    result: dict[str, Any] = {"scenario": scenario, "tree": tree.name}
    probes: list[Probe] = []
    rss = RssSampler(proc.pid)
    try:
        async with asyncio.timeout(2 * READY_CAP + args.probes * args.interval + 2 * args.cap + FLOOD_HOLD_CAP + RSS_SETTLE + 30):
            await b.connect(port)
            [query_id] = await b.modify([("abuse:get", {"name": "b"})], watch=True)
            if not await b.wait_results([query_id], READY_CAP):
                raise RuntimeError(f"B got no first result ({b.closed or 'timeout'})")
            warm = await run_probes(port, b, query_id, 1, 0.0, args.cap)  # not counted
            result["warmup_ms"] = probe_figures(warm)["max_ms"]
            result["rss_before_mb"] = rss_mb(proc.pid)
            rss.start()
            await abuser.start(port)
            t_ready = time.perf_counter()
            result["abuser_ready"] = await abuser.ready()
            result["abuser_ready_s"] = round(time.perf_counter() - t_ready, 2)
            cpu = CpuWindow(proc.pid)
            probes = await run_probes(port, b, query_id, args.probes, args.interval, args.cap)
            result.update(cpu.stop())
            await abuser.finish()
            result["abuser"] = await abuser.stop()
            if scenario == "flood":
                await asyncio.sleep(RSS_SETTLE)
                result["rss_after_mb"] = rss_mb(proc.pid)
                result["abuser"]["mutations_run"] = await flood_mutations_run(admin, schema)
    except TimeoutError:
        result["error"] = "the scenario ran past its cap"
    except (RuntimeError, OSError, WebSocketException) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if "abuser" not in result:
            result["abuser"] = await abuser.stop()
        result["rss_peak_mb"] = await rss.stop()
        await b.close()
        result["b_disconnected"] = b.closed
        result["server_exited"] = proc.poll()
        result["server_log"] = log_summary(proc)
        if proc.poll() is not None or "error" in result:
            result["server_log_tail"] = tail(proc.log_path, 20)  # type: ignore[attr-defined]
        processes.stop(proc, timeout=STOP_CAP)
        processes.procs.remove(proc)
    result.update(probe_figures(probes) if probes else {"probes": 0})
    result["probe_detail"] = [{"sent_s": round(p.sent - probes[0].sent, 3), "value": p.value, "error": p.error,
                               "latency_ms": None if p.latency is None else round(p.latency * 1e3, 1),
                               "mutation_ms": None if p.answered is None else round((p.answered - p.sent) * 1e3, 1)}
                              for p in probes]
    return result


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def median_or_none(values: list[Any]) -> float | None:
    """Median of figures where None means beyond the cap (sorted last)."""
    if not values:
        return None
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    mid = ordered[(len(ordered) - 1) // 2: len(ordered) // 2 + 1]
    return None if None in mid else statistics.mean(mid)


def summarize(results: list[dict[str, Any]], trees: list[Tree], scenarios: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for tree in trees:
        out[tree.name] = {}
        for scenario in scenarios:
            runs = [r for r in results if r["tree"] == tree.name and r["scenario"] == scenario]
            if not runs:
                continue
            s: dict[str, Any] = {"runs": len(runs)}
            for key in ("p50_ms", "p90_ms", "max_ms", "mutation_p50_ms"):
                s[key] = median_or_none([r.get(key) for r in runs])
            for key in ("probes", "timeouts", "mutation_errors"):
                s[key] = sum(r.get(key, 0) for r in runs)
            for key in ("rss_before_mb", "rss_peak_mb", "rss_after_mb"):
                values = [r[key] for r in runs if r.get(key) is not None]
                s[key] = round(statistics.median(values), 1) if values else None
            s["errors"] = [r["error"] for r in runs if "error" in r]
            out[tree.name][scenario] = s
    return out


def fmt_ms(v: float | None, cap: float) -> str:
    return f">{cap * 1e3:.0f}" if v is None else f"{v:.0f}"


def fmt_mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def print_tables(summary: dict[str, dict[str, Any]], trees: list[Tree], cap: float) -> dict[str, Any]:
    for tree in trees:
        info = tree.info
        print(f"\n{tree.name}: {tree.path} at {info['git_commit'][:12]}"
              f"{' (server/ changed)' if info['git_dirty_server'] else ''}, server/ sha256 {info['server_sha256'][:12]}")
        print(f"  {'scenario':<14}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}{'timeouts':>10}{'mutation p50':>14}"
              f"   RSS MB before / peak / +{RSS_SETTLE:g} s")
        for scenario, s in summary[tree.name].items():
            rss = f"{fmt_mb(s['rss_before_mb'])} / {fmt_mb(s['rss_peak_mb'])}"
            if s["rss_after_mb"] is not None:
                rss += f" / {fmt_mb(s['rss_after_mb'])}"
            print(f"  {scenario:<14}{fmt_ms(s['p50_ms'], cap):>9}{fmt_ms(s['p90_ms'], cap):>9}{fmt_ms(s['max_ms'], cap):>9}"
                  f"{str(s['timeouts']) + '/' + str(s['probes']):>10}{fmt_ms(s['mutation_p50_ms'], cap):>14}   {rss}"
                  + (f"   !! {'; '.join(s['errors'])}" if s["errors"] else ""))
    comparison: dict[str, Any] = {}
    base = trees[0]
    for tree in trees[1:]:
        key = f"{tree.name}/{base.name}"
        comparison[key] = {}
        print(f"\n{tree.name} / {base.name} (ratio of latencies; < 1 is faster)")
        print(f"  {'scenario':<14}{'p50':>8}{'p90':>8}{'max':>8}{'timeouts':>12}   flood RSS growth MB (peak - before)")
        for scenario, a in summary[tree.name].items():
            b = summary[base.name].get(scenario)
            if b is None:
                continue
            row: dict[str, Any] = {}
            for k in ("p50_ms", "p90_ms", "max_ms"):
                row[k.replace("_ms", "")] = None if a[k] is None or b[k] is None or b[k] == 0 else round(a[k] / b[k], 3)
            row["timeouts"] = [b["timeouts"], a["timeouts"]]
            growth = ""
            if scenario == "flood" and None not in (a["rss_peak_mb"], a["rss_before_mb"], b["rss_peak_mb"], b["rss_before_mb"]):
                row["rss_growth_mb"] = [round(b["rss_peak_mb"] - b["rss_before_mb"], 1), round(a["rss_peak_mb"] - a["rss_before_mb"], 1)]
                growth = f"{row['rss_growth_mb'][0]:.0f} -> {row['rss_growth_mb'][1]:.0f}"
            comparison[key][scenario] = row

            def r(v: float | None) -> str:
                return "n/a" if v is None else f"{v:.2f}"

            print(f"  {scenario:<14}{r(row['p50']):>8}{r(row['p90']):>8}{r(row['max']):>8}"
                  f"{str(b['timeouts']) + ' -> ' + str(a['timeouts']):>12}   {growth}")
    return comparison


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

async def bench(args: argparse.Namespace) -> None:
    import asyncpg

    trees = [Tree(name, path) for name, path in args.trees]
    for tree in trees:
        check_tree(tree, args.python, args.database_url)
    processes = Processes("abuse")
    admin = await asyncpg.connect(args.database_url)
    schemas: list[str] = []
    try:
        pg_version = await admin.fetchval("SHOW server_version")
        machine = describe_machine(pg_version, ("uvicorn", "starlette", "websockets", "asyncpg", "orjson", "uvloop"),
                                   [SCRIPT, *sorted(p for p in APP_DIR.rglob("*.py"))], ("--", "bench"))
        print(f"bench script at {machine['git_commit'][:12]}{' (bench/ changed)' if machine['git_dirty'] else ''}; "
              f"{machine['nproc']} CPUs ({machine['cpu_model']}); Python {machine['python']}; PostgreSQL {pg_version}")
        for tree in trees:
            print(f"tree {tree.name}: {tree.path} at {tree.info['git_commit'][:12]}, server/ sha256 "
                  f"{tree.info['server_sha256'][:12]}; server imported from {tree.info['server_file']} "
                  "(each server started checks it again: query abuse:server_file)")
        print(f"{args.probes} probes per scenario, one every {args.interval:g} s, cap {args.cap:g} s; "
              f"{args.runs} run(s); scenarios {', '.join(args.scenarios)}", flush=True)

        results: list[dict[str, Any]] = []
        for run in range(1, args.runs + 1):
            for tree in trees:
                schema = "bench_abuse_" + secrets.token_hex(4)
                schemas.append(schema)
                print(f"\n-- run {run}/{args.runs}, tree {tree.name} (schema {schema})", flush=True)
                for scenario in args.scenarios:
                    t = time.perf_counter()
                    r = await run_scenario(scenario, tree, processes, args, schema, admin)
                    r["run"] = run
                    results.append(r)
                    rss = f"RSS {fmt_mb(r.get('rss_before_mb'))} -> peak {fmt_mb(r.get('rss_peak_mb'))} MB"
                    if "rss_after_mb" in r:
                        rss += f" -> {fmt_mb(r['rss_after_mb'])} MB {RSS_SETTLE:g} s after"
                    print(f"  {scenario:<14} p50 {fmt_ms(r.get('p50_ms'), args.cap)}  p90 {fmt_ms(r.get('p90_ms'), args.cap)}  "
                          f"max {fmt_ms(r.get('max_ms'), args.cap)} ms  timeouts {r.get('timeouts', '-')}/{r['probes']}  "
                          f"mutation p50 {fmt_ms(r.get('mutation_p50_ms'), args.cap)} ms  {rss}  "
                          f"(CPU % of a core: server {r.get('server_cpu_pct', '-')}, others {r.get('others_cpu_pct', '-')}; "
                          f"machine {r.get('machine_busy_pct', '-')}% busy; "
                          f"{time.perf_counter() - t:.0f} s)", flush=True)
                    if "error" in r:
                        print(f"    !! {r['error']}\n{r.get('server_log_tail', '')}", flush=True)
                    if r.get("server_exited") not in (None, 0) and "error" not in r:
                        print(f"    !! the server exited with {r['server_exited']} during the scenario", flush=True)
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                schemas.remove(schema)

        summary = summarize(results, trees, args.scenarios)
        comparison = print_tables(summary, trees, args.cap)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out_path = RESULTS_DIR / f"abuse-{stamp}.json"
        out_path.write_text(json.dumps({
            "benchmark": "abuse",
            "timestamp_utc": stamp,
            "machine": machine,
            "trees": {t.name: t.info for t in trees},
            "settings": {"probes": args.probes, "interval_s": args.interval, "cap_s": args.cap, "runs": args.runs,
                         "scenarios": args.scenarios, "database_url": args.database_url,
                         "ready_cap_s": READY_CAP, "flood": {"mutations": FLOOD_MUTATIONS, "result_bytes": FLOOD_RESULT_BYTES,
                                                             "rcvbuf": FLOOD_RCVBUF, "rss_settle_s": RSS_SETTLE},
                         "big_body_bytes": BIG_BODY_BYTES,
                         "new_slow": {"period_s": NEW_SLOW_PERIOD, "keep": NEW_SLOW_KEEP},
                         "note": "latencies in ms from sending inc('b') to B receiving the value; null = beyond the cap "
                                 "(a timeout); summary: median over runs, timeouts summed"},
            "summary": summary,
            "comparison": comparison,
            "runs": results,
        }, indent=2, default=str) + "\n")
        print(f"\nwrote {out_path.relative_to(ROOT)}")
    finally:
        processes.stop_all()
        for schema in schemas:
            with contextlib.suppress(Exception):
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def parse_tree(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path).expanduser().resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", dest="trees", action="append", type=parse_tree, metavar="NAME=PATH",
                        help="a source tree to measure (repeatable, in order; the first is the baseline of the "
                             "comparison; default: this checkout, as 'this')")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the servers (default: this one)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list (default: all: {','.join(SCENARIOS)})")
    parser.add_argument("--probes", type=int, default=30, help="probes per scenario (default 30)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between probes (default 0.2)")
    parser.add_argument("--cap", type=float, default=30.0, help="a probe not delivered after this many seconds is a timeout (default 30)")
    parser.add_argument("--runs", type=int, default=1, help="repetitions of everything, trees interleaved (default 1)")
    parser.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL URL (default {DEFAULT_DB})")
    args = parser.parse_args()
    args.trees = args.trees or [("this", ROOT)]
    if len({name for name, _ in args.trees}) != len(args.trees):
        parser.error("tree names must differ")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    if args.probes < 1 or args.runs < 1:
        parser.error("--probes and --runs must be at least 1")
    run_cancellable(lambda: bench(args), "interrupted; servers stopped and schemas dropped")


if __name__ == "__main__":
    main()
