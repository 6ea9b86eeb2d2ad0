"""HTTP API throughput and latency: Ripple against raw asyncpg doing the same SQL, in one run.

What is measured
----------------
Two operations, each with `--concurrency` (default 32) closed-loop clients that send their next
request as soon as the previous answer arrived:

* query  -- `bench:get(key)`: an index point lookup (`with_index("by_key", eq).unique()`) on a
  table of `--seed` (10,000) documents, through `POST /api/query`.
* insert -- `bench:insert(key, value)`: one small document inserted, through `POST /api/mutation`.

Each is measured three ways in the same invocation:

* ripple       -- the real server (`python -m server.cli serve`, a subprocess, its default
                  configuration) over HTTP/1.1 keep-alive, driven by a separate load-generator
                  process (a lean asyncio client: one connection per client, Content-Length
                  responses parsed by hand, every response checked for `"status":"success"`).
* asyncpg tx   -- the SQL Ripple runs per request, issued directly from a 32-connection asyncpg
                  pool (same codec for jsonb as Ripple: orjson, binary), one task per client:
                    query:  BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                            SELECT id, creation_time, doc, k_by_key ... LIMIT 2; COMMIT
                    insert: BEGIN ISOLATION LEVEL SERIALIZABLE; INSERT INTO points (...);
                            SELECT _ripple_commit(writes, lock, channel, marker); COMMIT
                  The statements are the server's own (`server.core.sql.TableSql`, `COMMIT_TAIL`)
                  against the very tables and `_ripple_commit` function the server created (its
                  NOTIFY goes to a channel nobody listens on, so the idle server is not woken);
                  ids and index keys come from `server.core.ids` / `server.core.keys`. Connections
                  are taken from and returned to the pool per operation, as Ripple does (so both
                  pay asyncpg's reset-on-release round trip).
* asyncpg bare -- context only: the single SELECT, or the single INSERT, in autocommit.

The query result cache (docs/query-cache.md) gets three more Ripple query cases: "cache hit"
(each client sends the same request bytes again and again: every call after its first is a hit,
answered by the HTTP fast path for repeated requests, server/api/cached_responses.py), "cache
miss" (the 10,000-key workload on a second server with RIPPLE_QUERY_CACHE_BYTES=1: every lookup
misses and every result is refused as too large, the miss path's whole cost) and "cache off"
(a third server with RIPPLE_QUERY_CACHE_BYTES=0: the path before the cache). The two extra
servers share the schema and start only when their cases run (`--only`, a comma-separated list
of case keys, runs a subset). With the cache on, the plain "query ripple HTTP" case becomes
mostly hits once its clients have asked for each of their 256 keys.

Ripple does more per mutation than the baseline: its commit listener wakes on the NOTIFY and
runs a read-only transaction over the change log (coalesced under load); that cost is part of
what the "ripple" insert figures measure.

The ratio printed is Ripple / asyncpg-tx requests per second (the issue's target is >= 0.5);
for the cache hit case, Ripple / asyncpg-bare (the query cache's target is >= 1.5).

Calibration (is the load generator the limit?): the same generator process, with the same query
request, is run against two "floor" servers answering with a fixed copy of a real Ripple
response and doing no database work: a raw asyncio protocol server (the least work that could
serve the request; its figure is what the generator can drive at best) and a bare
uvicorn + Starlette endpoint configured like Ripple's (the framework's ceiling on this machine).
CPU use is sampled from /proc over each measurement window and printed in % of one core: the
generator (for asyncpg cases: this process, the asyncpg client), the server, the PostgreSQL
backends serving this benchmark's connections plus the cluster's background processes, "other"
(everything else: a shared machine's neighbours), and the whole machine in % of all cores; plus
"worker CPU us/req", the CPU time per request of the process doing the serving work (the server,
or the asyncpg client), which is the figure to compare when a single process is the limit.

Each case runs a warm-up (`--warmup` s) and then a measurement window (`--duration` s); the
whole set of cases is repeated `--runs` times, interleaved, and the median over runs is reported
(p50 / p99 / max latency in ms, nearest-rank percentiles over all requests of one run). The
machine may be shared: when processes that are not part of the benchmark used more than 15% of
a core during a window, that case is measured again (`--retries-disturbed`, default 2) and the
least disturbed attempt is kept; discarded attempts are kept in the JSON too. Results, per run
and median, go to bench/results/http_api-<UTC timestamp>.json with the git commit, a digest of
the server and app sources (the tree may be dirty) and machine information.

Everything runs on this machine: server, PostgreSQL, the generator and the asyncpg baseline share
its cores, so the figures are for this box as a whole. The script starts the server and floor
servers itself on free loopback ports, works in a fresh PostgreSQL schema, and stops the
processes and drops the schema at the end, also on errors and Ctrl-C.

    python bench/http_api.py [--duration 10] [--runs 3] [--concurrency 32]
                             [--database-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import (
    CLK_TCK,
    DEFAULT_DB,
    HOST,
    ROOT,
    Processes,
    describe_machine,
    free_port,
    http_call,
    local_tcp_ports,
    machine_busy_ticks,
    percentile,
    process_ticks,
    run_cancellable,
    tail,
    wait_port,
    wait_ready,
)

SCRIPT = Path(__file__).resolve()
APP_DIR = SCRIPT.parent / "app"
RESULTS_DIR = SCRIPT.parent / "results"
QUERY_KEY_PREFIX = "k"  # seeded documents: keys k000000 .. k009999
INSERT_KEY_PREFIX = "new-"  # inserted documents never collide with the looked-up keys
BODIES_PER_CLIENT = 256
OTHER_CPU_WARN = 15.0  # % of one core used by unrelated processes during a window
OUR_PIDS: set[int] = set()  # every subprocess this script started (never counted as "other")


# ---------------------------------------------------------------------------------------------
# Request bodies (shared by the load generator and the asyncpg baseline)
# ---------------------------------------------------------------------------------------------

def query_key(client: int, j: int, n_seed: int) -> str:
    """The key client `client` looks up in its `j`-th request: spread over all seeded keys."""
    return f"{QUERY_KEY_PREFIX}{(client * 7919 + j * 104729) % n_seed:06d}"


def insert_key(client: int, j: int) -> str:
    return f"{INSERT_KEY_PREFIX}{client}-{j}"


def http_request(path: str, body: dict[str, Any], port: int) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    return head + payload


def build_requests(workload: str, client: int, n_seed: int, port: int) -> list[bytes]:
    if workload == "query_hit":  # one key per client, asked again and again: query cache hits
        return [http_request("/api/query", {"path": "bench:get", "args": {"key": query_key(client, 0, n_seed)}, "format": "json"}, port)]
    if workload == "query":
        return [
            http_request("/api/query", {"path": "bench:get", "args": {"key": query_key(client, j, n_seed)}, "format": "json"}, port)
            for j in range(BODIES_PER_CLIENT)
        ]
    if workload == "insert":
        return [
            http_request("/api/mutation", {"path": "bench:insert", "args": {"key": insert_key(client, j), "value": j}, "format": "json"}, port)
            for j in range(BODIES_PER_CLIENT)
        ]
    raise ValueError(workload)


# ---------------------------------------------------------------------------------------------
# Statistics and CPU sampling
# ---------------------------------------------------------------------------------------------

def summarize(latencies_s: list[float], elapsed_s: float, errors: int, **extra: Any) -> dict[str, Any]:
    lat = sorted(latencies_s)
    return {
        "requests": len(lat),
        "errors": errors,
        "elapsed_s": round(elapsed_s, 4),
        "rps": len(lat) / elapsed_s if elapsed_s > 0 else 0.0,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": (lat[-1] if lat else math.nan) * 1e3,
        **extra,
    }


class CpuSampler:
    """CPU used over a window by named processes; by PostgreSQL for this benchmark (the backends
    connected to this script's processes, plus the cluster's shared background processes); by
    other Ripple deployments' commit listeners in the same database (woken by our NOTIFYs); by
    everything else on the machine ("other", including other clients' PostgreSQL backends: it
    should stay near 0, else a neighbour interfered); and the machine as a whole. Per-process
    figures come from tick accounting and leave out softirq time (loopback networking), so they
    add up to less than the machine figure."""

    def __init__(self, pids: dict[str, int], admin: Any) -> None:
        self.pids = pids
        self.admin = admin  # an asyncpg connection to the cluster, for pg_stat_activity
        self.backends: set[int] = set()
        self.listeners: set[int] = set()

    async def _classify_backends(self) -> None:
        ports = local_tcp_ports([*self.pids.values(), *OUR_PIDS, os.getpid()])
        rows = await self.admin.fetch("SELECT pid, client_port, backend_type, application_name FROM pg_stat_activity")
        self.backends |= {r["pid"] for r in rows if r["client_port"] in ports or r["backend_type"] != "client backend"}
        # Other deployments' LISTENing connections in the same database: PostgreSQL signals every
        # listening backend of the database on each NOTIFY, so they burn CPU because of *our*
        # commits. Counted apart, not as interference.
        self.listeners |= {r["pid"] for r in rows if (r["application_name"] or "").startswith(("ripple-listener", "ripple-scheduler"))}
        self.listeners -= self.backends

    def _snapshot(self) -> tuple[dict[int, tuple[str, int]], tuple[int, int], float]:
        return process_ticks(), machine_busy_ticks(), time.perf_counter()

    async def start(self) -> None:
        self._a = self._snapshot()
        await self._classify_backends()

    async def stop(self) -> dict[str, Any]:
        b = self._snapshot()
        await self._classify_backends()  # pools may have grown during the window
        (pa, ma, ta), (pb, mb, tb) = self._a, b
        wall = tb - ta
        used = {pid: ticks - pa.get(pid, ("", 0))[1] for pid, (_, ticks) in pb.items()}
        ours = {*self.pids.values(), *OUR_PIDS, os.getpid()}

        def pct(ticks: float) -> float:
            return round(100.0 * ticks / CLK_TCK / wall, 1)

        out = {f"{name}_cpu_pct": pct(used.get(pid, 0)) for name, pid in self.pids.items()}
        out["postgres_cpu_pct"] = pct(sum(t for pid, t in used.items() if pid in self.backends))
        out["foreign_listeners_cpu_pct"] = pct(sum(used.get(pid, 0) for pid in self.listeners))
        mine = ours | self.backends | self.listeners
        others = sorted(((t, pid) for pid, t in used.items() if pid not in mine and t > 0), reverse=True)
        out["other_cpu_pct"] = pct(sum(t for t, _ in others))
        out["other_top"] = ", ".join(f"{pb[pid][0]}[{pid}] {pct(t):g}%" for t, pid in others[:4])  # type: ignore[assignment]
        busy, total = mb[0] - ma[0], mb[1] - ma[1]
        out["machine_busy_pct"] = round(100.0 * busy / total, 1) if total else math.nan
        return out


async def loadgen_result(proc: asyncio.subprocess.Process, sampler: CpuSampler) -> tuple[dict[str, Any], dict[str, Any]]:
    """Follow a load generator subprocess: CPU sampling between its MEASURE_START and MEASURE_END
    lines, its result from its JSON line; (result, CPU figures). Kills it if this is interrupted."""
    assert proc.stdout is not None
    cpu: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    try:
        async for raw in proc.stdout:
            line = raw.decode().strip()
            if line == "MEASURE_START":
                await sampler.start()
            elif line == "MEASURE_END":
                cpu = await sampler.stop()
            elif line.startswith("{"):
                result = json.loads(line)
        if await proc.wait() != 0 or result is None:
            raise RuntimeError(f"load generator failed (exit {proc.returncode})")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return result, cpu


# ---------------------------------------------------------------------------------------------
# Load generator (runs as a subprocess: `http_api.py _loadgen ...`)
# ---------------------------------------------------------------------------------------------

async def loadgen_main(port: int, workload: str, concurrency: int, warmup: float, duration: float, n_seed: int) -> dict[str, Any]:
    """Closed-loop keep-alive HTTP/1.1 clients; prints MEASURE_START / MEASURE_END markers."""
    latencies: list[float] = []
    errors = 0
    first_error: list[str] = []
    connections = [await asyncio.open_connection(HOST, port) for _ in range(concurrency)]
    loop_start = time.perf_counter()
    measure_start = loop_start + warmup
    measure_end = measure_start + duration
    finished: list[float] = []

    async def client(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        requests = build_requests(workload, n, n_seed, port)
        count = len(requests)
        record = latencies.append
        perf = time.perf_counter
        j = 0
        while True:
            t0 = perf()
            if t0 >= measure_end:
                break
            writer.write(requests[j % count])
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.find(b"content-length:")
            if at < 0:
                at = head.lower().find(b"content-length:")
                if at < 0:
                    raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
            length = int(head[at + 15 : head.index(b"\r\n", at)])
            body = await reader.readexactly(length)
            t1 = perf()
            if head[9:12] != b"200" or not body.startswith(b'{"status":"success"'):
                errors += 1
                if not first_error:
                    first_error.append((head + body)[:500].decode(errors="replace"))
            elif t0 >= measure_start:
                record(t1 - t0)
            j += 1
        finished.append(perf())
        writer.close()

    async def markers() -> None:
        await asyncio.sleep(max(0.0, measure_start - time.perf_counter()))
        print("MEASURE_START", flush=True)
        await asyncio.sleep(max(0.0, measure_end - time.perf_counter()))
        print("MEASURE_END", flush=True)

    marker_task = asyncio.create_task(markers())
    await asyncio.sleep(max(0.0, measure_start - time.perf_counter()))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(client(n, r, w) for n, (r, w) in enumerate(connections)))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await marker_task
    elapsed = max(finished) - measure_start
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return summarize(latencies, elapsed, errors, generator_self_cpu_pct=round(100.0 * cpu / elapsed, 1),
                     first_error=first_error[0] if first_error else None)


# ---------------------------------------------------------------------------------------------
# Floor servers (subprocesses: `http_api.py _floor raw|starlette ...`)
# ---------------------------------------------------------------------------------------------

class RawFloorProtocol(asyncio.Protocol):
    """The least work that answers a keep-alive POST: find the end of the body, send bytes."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            at = self.buffer.lower().find(b"content-length:", 0, end)
            length = int(self.buffer[at + 15 : self.buffer.index(b"\r\n", at)]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(self.response)  # type: ignore[attr-defined]


def floor_main(kind: str, port: int, body: bytes) -> None:
    if kind == "raw":
        response = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )

        async def serve() -> None:
            server = await asyncio.get_running_loop().create_server(lambda: RawFloorProtocol(response), HOST, port)
            async with server:
                await server.serve_forever()

        asyncio.run(serve())
        return

    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(body, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/api/query", endpoint, methods=["POST"]),
                            Route("/_ripple/health", health, methods=["GET"])])
    # Configured like server/runner.py: default loop and HTTP implementation, no access log.
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False, lifespan="off")


# ---------------------------------------------------------------------------------------------
# Running the load generator
# ---------------------------------------------------------------------------------------------

async def run_loadgen(port: int, workload: str, args: argparse.Namespace, sampler: CpuSampler, procs: list[asyncio.subprocess.Process]) -> dict[str, Any]:
    """Run one generator subprocess; sample CPU between its MEASURE_START/END markers."""
    argv = [sys.executable, str(SCRIPT), "_loadgen", "--port", str(port), "--workload", workload,
            "--concurrency", str(args.concurrency), "--warmup", str(args.warmup), "--duration", str(args.duration),
            "--seed", str(args.seed)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    procs.append(proc)
    sampler.pids["generator"] = proc.pid
    try:
        result, cpu = await loadgen_result(proc, sampler)
    finally:
        procs.remove(proc)
    result.update(cpu)
    if result["errors"]:
        print(f"  !! {result['errors']} failed requests; first: {result['first_error']}", flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# Raw asyncpg baseline
# ---------------------------------------------------------------------------------------------

async def closed_loop(op: Callable[[int, int], Awaitable[None]], concurrency: int, warmup: float, duration: float,
                      sampler: CpuSampler) -> dict[str, Any]:
    """`concurrency` tasks each calling op(client, j) back to back; latency per call."""
    latencies: list[float] = []
    finished: list[float] = []
    start = time.perf_counter()
    measure_start, measure_end = start + warmup, start + warmup + duration

    async def worker(n: int) -> None:
        perf = time.perf_counter
        record = latencies.append
        j = 0
        while True:
            t0 = perf()
            if t0 >= measure_end:
                break
            await op(n, j)
            if t0 >= measure_start:
                record(perf() - t0)
            j += 1
        finished.append(perf())

    async def window() -> dict[str, Any]:
        sampler.pids["generator"] = os.getpid()  # the asyncpg client is this process
        await asyncio.sleep(warmup)
        await sampler.start()
        await asyncio.sleep(max(0.0, measure_end - time.perf_counter()))
        return await sampler.stop()

    window_task = asyncio.create_task(window())
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    cpu = await window_task
    return summarize(latencies, max(finished) - measure_start, 0, **cpu)


class RawAsyncpg:
    """The SQL of `bench:get` and `bench:insert`, straight from an asyncpg pool."""

    def __init__(self, pool: Any, namespace: str, table_number: int, n_seed: int) -> None:
        from server.core import sql
        from server.core.schema import BY_CREATION_TIME, CREATION_TIME

        self.pool = pool
        self.n_seed = n_seed
        self.table_number = table_number
        self.fields = {BY_CREATION_TIME: [CREATION_TIME], "by_key": ["key", CREATION_TIME]}  # = Table.index_fields()
        self.tsql = sql.TableSql("points", list(self.fields))
        self.range_sql = self.tsql.range[("by_key", False)]
        self.commit_tail = sql.COMMIT_TAIL
        self.lock = sql.lock_key(namespace, "commit")
        # pg_notify goes to a channel of its own: on Ripple's channel the server's commit listener
        # would wake for every baseline commit and take CPU from the baseline.
        self.channel = ("bench_raw_" + namespace)[:63]
        self.retries = 0
        self._last_ct = 0.0

    def key_range(self, client: int, j: int) -> tuple[bytes, bytes]:
        from server.core import keys

        prefix = keys.encode_values([query_key(client, j, self.n_seed)])
        return prefix, prefix + keys.AFTER_PREFIX

    async def query_tx(self, client: int, j: int) -> None:
        lo, hi = self.key_range(client, j)
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(self.range_sql, lo, hi, 2)  # unique() asks for 2 rows
        assert len(rows) == 1

    async def query_bare(self, client: int, j: int) -> None:
        lo, hi = self.key_range(client, j)
        rows = await self.pool.fetch(self.range_sql, lo, hi, 2)
        assert len(rows) == 1

    def new_row(self, client: int, j: int) -> tuple[tuple[Any, ...], list[dict[str, Any]]]:
        from server.core import keys
        from server.core.ids import new_id

        doc_id = new_id(self.table_number)
        ct = max(time.time() * 1000.0, self._last_ct + 0.001)
        self._last_ct = ct
        doc = {"key": insert_key(client, j), "value": j}
        full = {"_id": doc_id, "_creationTime": ct, **doc}
        index_keys = {name: keys.index_key(full, f) for name, f in self.fields.items()}
        writes = [{"table": "points", "id": doc_id, "old": None,
                   "new": {n: base64.b64encode(k).decode() for n, k in index_keys.items()}}]
        return (doc_id, ct, doc, *index_keys.values()), writes

    async def insert_tx(self, client: int, j: int) -> None:
        import asyncpg

        while True:
            row, writes = self.new_row(client, j)
            try:
                async with self.pool.acquire() as conn, conn.transaction(isolation="serializable"):
                    await conn.execute(self.tsql.insert, *row)
                    await conn.fetchval(self.commit_tail, writes, self.lock, self.channel, secrets.randbits(63))
                return
            except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError):
                self.retries += 1  # Ripple retries such conflicts too

    async def insert_bare(self, client: int, j: int) -> None:
        row, _ = self.new_row(client, j)
        await self.pool.execute(self.tsql.insert, *row)


# ---------------------------------------------------------------------------------------------
# Machine information and reporting
# ---------------------------------------------------------------------------------------------

def machine_info(pg_version: str) -> dict[str, Any]:
    """The shared machine description (the code digest covers server/, the app and
    bench/common.py), plus what uvicorn's "auto" settings (server/runner.py) choose here."""
    info = describe_machine(pg_version, ("asyncpg", "uvicorn", "starlette", "orjson", "pydantic", "h11", "httptools", "uvloop"),
                            [*ROOT.joinpath("server").rglob("*.py"), *APP_DIR.rglob("*.py")])
    info["uvicorn_http"] = "httptools" if info["packages"]["httptools"] else "h11"
    info["uvicorn_loop"] = "uvloop" if info["packages"]["uvloop"] else "asyncio"
    return info


CASES = [
    # (key, label, workload)
    ("floor_raw", "floor: raw asyncio server", "query"),
    ("floor_starlette", "floor: uvicorn+starlette", "query"),
    ("query_ripple", "query  ripple HTTP", "query"),
    ("query_hit_ripple", "query  ripple cache hit", "query_hit"),
    ("query_miss_ripple", "query  ripple cache miss", "query"),
    ("query_nocache_ripple", "query  ripple cache off", "query"),
    ("query_asyncpg_tx", "query  asyncpg tx", "query"),
    ("query_asyncpg_bare", "query  asyncpg bare", "query"),
    ("insert_ripple", "insert ripple HTTP", "insert"),
    ("insert_asyncpg_tx", "insert asyncpg tx", "insert"),
    ("insert_asyncpg_bare", "insert asyncpg bare", "insert"),
]
METRICS = ("rps", "p50_ms", "p99_ms", "max_ms")
CPU_COLUMNS = ("generator_cpu_pct", "server_cpu_pct", "postgres_cpu_pct", "other_cpu_pct", "machine_busy_pct")


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (*METRICS, *CPU_COLUMNS, "worker_cpu_us_per_req", "errors", "requests"):
        values = [r[name] for r in runs if name in r and r[name] is not None]
        if values:
            out[name] = statistics.median(values)
    out["rps_min"] = min(r["rps"] for r in runs)
    out["rps_max"] = max(r["rps"] for r in runs)
    return out


def print_table(results: dict[str, dict[str, Any]], title: str) -> None:
    print(f"\n{title}")
    print(f"{'case':28} {'req/s':>7} {'(runs min-max)':>15} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>6}  "
          f"{'CPU% gen':>8} {'server':>6} {'pg':>5} {'other':>5} {'machine':>7}  {'worker CPU us/req':>17}")
    for key, label, _ in CASES:
        r = results.get(key)
        if not r:
            continue
        cpu = " ".join(f"{r.get(c, math.nan):>{w}.0f}" for c, w in zip(CPU_COLUMNS, (8, 6, 5, 5, 7), strict=True))
        spread = f"{r['rps_min']:.0f}-{r['rps_max']:.0f}"
        print(f"{label:28} {r['rps']:>7.0f} {spread:>15} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['max_ms']:>7.2f} "
              f"{r.get('errors', 0):>6.0f}  {cpu}  {r.get('worker_cpu_us_per_req', math.nan):>17.0f}")


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for op in ("query", "insert"):
        for base in ("asyncpg_tx", "asyncpg_bare"):
            a, b = results.get(f"{op}_ripple"), results.get(f"{op}_{base}")
            if a and b and b["rps"]:
                out[f"{op}_ripple_over_{base}"] = a["rps"] / b["rps"]
    for case in ("query_hit_ripple", "query_miss_ripple"):
        a, b = results.get(case), results.get("query_asyncpg_bare")
        if a and b and b["rps"]:
            out[f"{case}_over_asyncpg_bare"] = a["rps"] / b["rps"]
    a, b = results.get("query_miss_ripple"), results.get("query_nocache_ripple")
    if a and b and b["rps"]:
        out["query_miss_over_cache_off"] = a["rps"] / b["rps"]
    a, b = results.get("query_ripple"), results.get("floor_starlette")
    if a and b and b["rps"]:
        out["query_ripple_over_floor_starlette"] = a["rps"] / b["rps"]
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

async def bench(args: argparse.Namespace) -> None:
    import asyncpg
    import orjson

    from server.config import Config

    namespace = "bench_" + secrets.token_hex(4)
    processes = Processes("http_api", pids=OUR_PIDS)
    loadgens: list[asyncio.subprocess.Process] = []
    admin = await asyncpg.connect(args.database_url)
    pool = None
    try:
        pg_version = await admin.fetchval("SELECT version()")
        info = machine_info(pg_version)
        pool_max = args.ripple_pool_max or int(os.environ.get("RIPPLE_POOL_MAX", Config().pool_max))
        print(f"commit {info['git_commit'][:12]}{' (dirty tree)' if info['git_dirty'] else ''}, "
              f"server+app code sha256 {info['code_sha256'][:12]}; {info['nproc']} CPUs "
              f"({info['cpu_model']}); Python {info['python']}; {pg_version.split(' on ')[0]}")
        print(f"schema {namespace}; concurrency {args.concurrency}; warm-up {args.warmup} s, window {args.duration} s, "
              f"{args.runs} run(s); Ripple pool_max {pool_max}; raw asyncpg pool {args.concurrency}", flush=True)
        print(f"uvicorn picks HTTP parser {info['uvicorn_http']} and event loop {info['uvicorn_loop']} "
              f"(the asyncpg baseline uses the same loop; the load generator plain asyncio)", flush=True)

        # Ripple server ------------------------------------------------------------------------
        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RIPPLE_POOL_MAX": str(pool_max)}

        async def start_server() -> subprocess.Popen[bytes]:
            proc = processes.start("ripple", [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
                                              "--dir", str(APP_DIR), "--database-url", args.database_url,
                                              "--db-schema", namespace], env=env, cwd=APP_DIR)
            await wait_ready(proc, port, "/_ripple/health")
            return proc

        server = await start_server()
        server_restarts: list[str] = []
        # The same app and data with the query cache (docs/query-cache.md) at 1 byte (every lookup
        # misses and every result is refused as too large: the miss path's cost) and off (0).
        variants: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        # Started only when measured: each follows the change log too (a tick per insert batch).
        for name, cache_bytes in (("miss", "1"), ("nocache", "0")):
            if args.only and f"query_{name}_ripple" not in args.only:
                continue
            vport = free_port()
            proc = processes.start(f"ripple-{name}", [sys.executable, "-m", "server.cli", "serve", "--port", str(vport),
                                                     "--dir", str(APP_DIR), "--database-url", args.database_url,
                                                     "--db-schema", namespace],
                                   env={**env, "RIPPLE_QUERY_CACHE_BYTES": cache_bytes}, cwd=APP_DIR)
            await wait_ready(proc, vport, "/_ripple/health")
            variants[name] = (proc, vport)

        async def ensure_server() -> None:
            """On a shared machine something may kill the server; start it again (same schema and
            data), say so, and record it."""
            nonlocal server
            if server.poll() is None:
                return
            note = f"Ripple server exited with {server.returncode} at {dt.datetime.now(dt.UTC):%H:%M:%S}Z"
            print(f"  !! {note}; restarting it. Its log ended with:\n{tail(server.log_path, 15)}", flush=True)  # type: ignore[attr-defined]
            if len(server_restarts) >= 3:
                raise RuntimeError("the Ripple server keeps exiting; giving up")
            server_restarts.append(note)
            server = await start_server()
        t = time.perf_counter()
        for start in range(0, args.seed, 1000):
            status, body = await asyncio.to_thread(http_call, port, "POST", "/api/mutation", {
                "path": "bench:seed", "args": {"prefix": QUERY_KEY_PREFIX, "start": start,
                                                "count": min(1000, args.seed - start)}, "format": "json"})
            if status != 200 or json.loads(body).get("status") != "success":
                raise RuntimeError(f"seeding failed: {status} {body[:300]!r}")
        await admin.execute(f'ANALYZE "{namespace}".points')
        print(f"seeded {args.seed} documents through bench:seed in {time.perf_counter() - t:.1f} s", flush=True)
        status, sample = await asyncio.to_thread(http_call, port, "POST", "/api/query", {"path": "bench:get", "args": {"key": query_key(0, 0, args.seed)}, "format": "json"})
        assert status == 200 and orjson.loads(sample)["value"]["key"] == query_key(0, 0, args.seed), sample

        # Floor servers, answering with a copy of that real response -------------------------
        floors: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        body_hex = sample.hex()
        for kind in ("raw", "starlette"):
            fport = free_port()
            proc = processes.start(f"floor-{kind}", [sys.executable, str(SCRIPT), "_floor", kind,
                                                     "--port", str(fport), "--body-hex", body_hex])
            floors[kind] = (proc, fport)
        for kind, (proc, fport) in floors.items():
            if kind == "starlette":
                await wait_ready(proc, fport, "/_ripple/health")
            else:
                await wait_port(proc, fport, "raw floor server did not start")

        # Raw asyncpg pool on the same schema --------------------------------------------------
        from server.core.database import init_connection

        table_number = await admin.fetchval(f'SELECT number FROM "{namespace}"._ripple_tables WHERE name = $1', "points")
        pool = await asyncpg.create_pool(args.database_url, min_size=args.concurrency, max_size=args.concurrency,
                                         init=init_connection, server_settings={"search_path": namespace})
        raw = RawAsyncpg(pool, namespace, table_number, args.seed)

        async def measure(key: str, workload: str) -> dict[str, Any]:
            if key.startswith("floor_"):
                proc, fport = floors[key.removeprefix("floor_")]
                result = await run_loadgen(fport, workload, args, CpuSampler({"server": proc.pid}, admin), loadgens)
            elif key.removesuffix("_ripple").removeprefix("query_") in variants:
                proc, vport = variants[key.removesuffix("_ripple").removeprefix("query_")]
                result = await run_loadgen(vport, workload, args, CpuSampler({"server": proc.pid}, admin), loadgens)
            elif key.endswith("_ripple"):
                while True:
                    await ensure_server()
                    try:
                        result = await run_loadgen(port, workload, args, CpuSampler({"server": server.pid}, admin), loadgens)
                        break
                    except RuntimeError:
                        if server.poll() is None:
                            raise  # the generator failed for another reason
            else:
                await ensure_server()  # sampled too, to show it stays idle
                op = {"query_asyncpg_tx": raw.query_tx, "query_asyncpg_bare": raw.query_bare,
                      "insert_asyncpg_tx": raw.insert_tx, "insert_asyncpg_bare": raw.insert_bare}[key]
                result = await closed_loop(op, args.concurrency, args.warmup, args.duration, CpuSampler({"server": server.pid}, admin))
            # CPU time per request of the process doing the serving work: the server for HTTP
            # cases, this (asyncpg client) process for the asyncpg cases.
            worker = "generator" if "asyncpg" in key else "server"
            result["worker_cpu_us_per_req"] = round(result[f"{worker}_cpu_pct"] / 100 * 1e6 / result["rps"], 1)
            return result

        per_run: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in CASES if not args.only or key in args.only}
        discarded: list[dict[str, Any]] = []
        for run in range(1, args.runs + 1):
            print(f"\n-- run {run}/{args.runs}", flush=True)
            for key, label, workload in CASES:
                if args.only and key not in args.only:
                    continue
                attempts = []
                for attempt in range(1, args.retries_disturbed + 2):
                    result = await measure(key, workload)
                    result.update(run=run, attempt=attempt)
                    attempts.append(result)
                    print(f"  {label:28} {result['rps']:>8.0f} req/s  p50 {result['p50_ms']:.2f}  p99 {result['p99_ms']:.2f}  "
                          f"max {result['max_ms']:.2f} ms  (CPU% gen {result.get('generator_cpu_pct', 0):.0f}, "
                          f"server {result.get('server_cpu_pct', 0):.0f}, pg {result.get('postgres_cpu_pct', 0):.0f}, "
                          f"other {result.get('other_cpu_pct', 0):.0f}, machine {result.get('machine_busy_pct', 0):.0f}; "
                          f"worker {result['worker_cpu_us_per_req']:.0f} us CPU/req)", flush=True)
                    if result.get("other_cpu_pct", 0) <= OTHER_CPU_WARN:
                        break
                    print(f"     !! unrelated processes used {result['other_cpu_pct']:.0f}% CPU in this window ({result['other_top']})"
                          + ("; measuring again" if attempt <= args.retries_disturbed else ""), flush=True)
                # keep the least disturbed attempt; the others are recorded as discarded
                kept = min(attempts, key=lambda r: r.get("other_cpu_pct", 0))
                per_run[key].append(kept)
                discarded.extend({"case": key, **r} for r in attempts if r is not kept)
            run_results = {k: v[-1] for k, v in per_run.items()}
            print("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios(run_results).items()), flush=True)

        medians = {key: median_of_runs(runs) for key, runs in per_run.items()}
        final_ratios = ratios(medians)
        print_table(medians, f"Median of {args.runs} run(s), {args.concurrency} concurrent clients, "
                             f"{args.duration:g} s windows (CPU in % of one core; machine in % of all cores)")
        print("\nRipple / raw asyncpg throughput (target >= 0.50 against asyncpg tx):")
        for k, v in final_ratios.items():
            print(f"  {k:40} {v:.2f}")
        if raw.retries:
            print(f"  (asyncpg tx inserts retried {raw.retries} serialization conflicts)")
        still = [f"{k} run {r['run']}" for k, rs in per_run.items() for r in rs if r.get("other_cpu_pct", 0) > OTHER_CPU_WARN]
        print(f"\n{len(discarded)} window(s) re-measured because unrelated processes were busy; "
              + (f"kept windows that were still disturbed: {', '.join(still)}" if still else "every kept window was quiet"))

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out_path = RESULTS_DIR / f"http_api-{stamp}.json"
        out_path.write_text(json.dumps({
            "benchmark": "http_api",
            "timestamp_utc": stamp,
            "machine": info,
            "settings": {"concurrency": args.concurrency, "duration_s": args.duration, "warmup_s": args.warmup,
                         "runs": args.runs, "seed_documents": args.seed, "ripple_pool_max": pool_max,
                         "other_cpu_warn_pct": OTHER_CPU_WARN, "retries_disturbed": args.retries_disturbed,
                         "asyncpg_pool_size": args.concurrency, "database_url": args.database_url,
                         "asyncpg_baseline_loop": type(asyncio.get_running_loop()).__module__,
                         "load_generator_loop": "asyncio (default)",
                         "cases": {key: label for key, label, _ in CASES},
                         "note": "all processes on one machine; CPU figures in % of one core"},
            "median": medians,
            "ratios": final_ratios,
            "runs": per_run,
            "discarded_disturbed_attempts": discarded,
            "asyncpg_tx_insert_retries": raw.retries,
            "server_restarts": server_restarts,
        }, indent=2, default=str) + "\n")
        print(f"\nwrote {out_path.relative_to(ROOT)}")
    finally:
        for proc in list(loadgens):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
        processes.stop_all()
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        await admin.close()


def baseline_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The asyncpg baseline runs on the event loop uvicorn picks for the server: uvloop when it
    is installed (uvicorn's loop="auto"), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        p = argparse.ArgumentParser(prog="http_api.py _loadgen")
        p.add_argument("_loadgen")
        for name, typ in (("--port", int), ("--workload", str), ("--concurrency", int), ("--warmup", float),
                          ("--duration", float), ("--seed", int)):
            p.add_argument(name, type=typ, required=True)
        a = p.parse_args()
        result = asyncio.run(loadgen_main(a.port, a.workload, a.concurrency, a.warmup, a.duration, a.seed))
        print(json.dumps(result), flush=True)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_floor":
        p = argparse.ArgumentParser(prog="http_api.py _floor")
        p.add_argument("_floor")
        p.add_argument("kind", choices=("raw", "starlette"))
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--body-hex", required=True)
        a = p.parse_args()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        floor_main(a.kind, a.port, bytes.fromhex(a.body_hex))
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window per case, seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per case before the window, seconds (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the whole set of cases (default 3)")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=None,
                        help="comma-separated case keys to run (default all), e.g. query_hit_ripple,query_asyncpg_bare")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seed", type=int, default=10_000, help="documents seeded before measuring (default 10000)")
    parser.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL URL (default {DEFAULT_DB})")
    parser.add_argument("--retries-disturbed", type=int, default=2,
                        help=f"measure a case again (at most this often) when unrelated processes used more than "
                             f"{OTHER_CPU_WARN:g}%% of a core during its window; the least disturbed attempt is kept (default 2)")
    parser.add_argument("--ripple-pool-max", type=int, default=None,
                        help="RIPPLE_POOL_MAX for the server (default: the server's own default)")
    args = parser.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    run_cancellable(lambda: bench(args), "interrupted; subprocesses stopped and schema dropped",
                    loop_factory=baseline_loop_factory())


if __name__ == "__main__":
    main()
