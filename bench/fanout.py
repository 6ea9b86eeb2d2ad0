"""Live-query fan-out: Ripple against a naive re-run-everything baseline and a no-query floor.

What is measured
----------------
Clients run in a separate process: bench/fanout_clients.mjs (Node 20, the `ws` package pinned in
bench/package.json; `npm ci --prefix bench` installs it, this script does it when missing). It
opens the websockets, speaks the Convex sync protocol directly (Connect, ModifyQuerySet 0->1 with
Adds, then reads Transitions and checks that each startVersion equals the previous endVersion)
and is also the writer, so t0 and t1 come from one clock in one process.

Every write sets one counter to a value never used before: `counters:put(name, value)` through
`POST /api/mutation` (one HTTP/1.1 keep-alive connection), one write at a time: the next write is
sent --a-gap-ms (200) / --b-gap-ms (20) after every subscription of the written query received
the new value (closed loop, so the figures are latencies, not queueing; in (a) the longer pause
lets the server finish what a write left behind, so every write meets an idle server). The first
--warmup-writes (5) writes of a case are not counted. The subscribed query is
`counters:get(name)`: one index range (by_name == name) per query (bench/fanout_app/). The
clients do not offer permessage-deflate.

* (a) --clients (1,000) websockets, each subscribed to the same query; --a-writes (50) writes to it.
* (b) --b-clients (1,000) websockets holding S subscriptions in total, S in --b-subs
  (1,000, 5,000, 10,000), each client S / b-clients distinct queries; S / --b-subs-per-query (10)
  distinct queries with exactly --b-subs-per-query subscribers each, so every write touches one
  query and must reach the same number of subscriptions (10) whatever S is: what grows with S is
  only what a write does NOT touch. (The number of sockets stays fixed, so S measures
  subscriptions, not connections.) --b-writes (200) writes spread over all the queries.
* (c) server RSS (VmRSS of the server process, /proc/<pid>/status): after start-up (+ one query)
  and after all subscriptions delivered their first result (+1 s settle); (after - before) / S.
* (d) one write invalidates --d-queries (1,000) distinct subscribed queries, each with one client:
  client i subscribes to `counters:with_shared(name=d<i>, shared="shared")`, which reads the
  shared counter and its own one (absent: cases (a) and (b) write the q<i> counters, whose
  values would add to the shared one's), so the queries are distinct executions (no shared
  result, no query cache hit) and every write to "shared" (--d-writes (20) of them, --d-gap-ms (200) apart)
  changes all 1,000 results. Run on Ripple twice in the same invocation: `ripple-k1`
  (RIPPLE_LIVE_QUERY_PARALLELISM=1: a tick re-runs its queries one at a time on one connection,
  as before issue 16 part 3) and `ripple` (its default: up to 4 connections sharing the tick's
  snapshot). Only Ripple runs it (the baselines have no such query).

Figures, per write and per delivered update (one subscription receiving the written value):

* send->receive  t1 - t0: t0 = the writer sends the mutation request, t1 = a client's websocket
                 'message' event for the Transition carrying the new value (before parsing it);
                 one sample per (write, subscription). Includes the mutation's own execution.
* commit->receive t1 (wall clock: performance.timeOrigin + performance.now()) - the commit
                 timestamp in the Transition's endVersion.ts (ns; PostgreSQL's clock_timestamp()
                 taken in the writing transaction just before it commits -- Ripple's commit
                 timestamps, and the baselines' own). Same machine, same clock; different
                 processes.
* write complete t(last affected subscription received) - t0, one sample per write.
* commit->last   per write: the largest commit->receive of its deliveries (the last client to get
                 it), one sample per write; (d)'s figure.
* mutation RTT   t0 -> HTTP response of the write (context).
* re-executions / write: delta of `ripple_query_executions_total` (GET /_ripple/metrics) over
                 the write phase, divided by the writes sent (warm-up ones included).
* server CPU ms / write: the server process's user+system time over the write phase / writes.

Servers, each started fresh for every case (so RSS starts clean), one at a time:

* ripple    `python -m server.cli serve` (its default configuration but ONE process, as
            bench/common.py pins for every script) on bench/fanout_app; with --ripple-workers N,
            `serve --workers N`: RSS and CPU are then the supervisor's and its workers' together,
            and the metrics (re-executions) the group's sums (docs/operations.md#workers).
* ripple-k1 the same with RIPPLE_LIVE_QUERY_PARALLELISM=1 (case (d) only).
* naive     BASELINE (bench/fanout_baselines.py naive): same stack as Ripple (uvicorn+Starlette,
            websockets-sansio); on every NOTIFY it re-runs the SQL of every subscription, then
            sends the changed results. No read sets, no shared executions.
* floor     BASELINE (bench/fanout_baselines.py floor, same stack as Ripple): NOTIFY -> send the
            value from the payload, no query; calibrates the clients and the stack.
* floor-ws  BASELINE: the same floor on the `websockets` library's own server with broadcast().
* floor-raw BASELINE: the same floor on a bare asyncio Protocol (handshake, masked frames in,
            each distinct message framed once and written straight to every transport): the
            least work Python could do to deliver a write on this machine.

Targets (the issue, on this 2-core machine): (a) send->receive p99 <= 50 ms over all clients;
(b) write-complete p50 <= 10 ms at every S, flat as S grows (p50 at the largest S <= 1.5x p50 at
the smallest), exactly 1 re-execution per write (each write touches exactly one query);
(c) <= 20 KB of server RSS per subscription (at the largest S of (b)); (d) commit->last client p99
<= 150 ms with exactly --d-queries re-executions per write.

Load generator calibration: the floors are driven by the same Node process; their figures are
what the clients (and this machine) allow at best. "node ELU" is the Node event loop's
utilization over the write phase (pauses included).

Shared machine: before each case the script waits (--quiet-wait) for the rest of the machine to
be quiet, measures the CPU that other processes (their PostgreSQL backends included) used during
the write phase, measures a disturbed case again (--retries-disturbed) and keeps the least
disturbed attempt; figures taken while others used > 15% of a core are flagged. A change of the
code or packages during the run (other people's commits) is reported.

The whole set of cases is repeated --runs times (interleaved) and the median over runs of each
percentile is reported (max: the largest of the runs). With --profile, after the measured runs
Ripple's (a) and largest (b) cases are run once more under `py-spy record --native` (not
counted): the share of cyclic GC and the top functions by share of the server's busy samples are
printed and saved (--profile-dir keeps the collapsed stacks). Results go to
bench/results/fanout-<UTC timestamp>.json with the git commit and machine information.

Everything is on this machine (loopback only): PostgreSQL, the server, the Node clients and
this script share its cores. The script works in fresh PostgreSQL schemas and stops every
process and drops the schemas at the end, also on errors and Ctrl-C.

    python bench/fanout.py [--quick] [--runs 3] [--cases a,b,d] [--clients 1000] [--b-subs 1000,5000,10000] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import (
    CLK_TCK,
    DEFAULT_DB,
    HOST,
    ROOT,
    Processes,
    command_output,
    describe_machine,
    free_port,
    group_pids,
    http_call,
    local_tcp_ports,
    machine_busy_ticks,
    process_ticks,
    run_cancellable,
    wait_port,
    wait_ready,
)
from common import NodeClients as NodeProcess

SCRIPT = Path(__file__).resolve()
BENCH = SCRIPT.parent
APP_DIR = BENCH / "fanout_app"
CLIENTS_JS = BENCH / "fanout_clients.mjs"
BASELINES = BENCH / "fanout_baselines.py"
RESULTS_DIR = BENCH / "results"
PREFIX = "q"
SHARED = "shared"  # (d)'s counter every query reads
D_PREFIX = "d"  # (d)'s own counters: never written, so each query's result is the shared value
OTHER_CPU_WARN = 15.0  # % of one core used by unrelated processes during a write phase

SERVERS = {
    "ripple": "Ripple",
    "ripple-k1": "Ripple, LIVE_QUERY_PARALLELISM=1",
    "naive": "baseline: naive re-run-all",
    "floor": "floor: NOTIFY->echo (asgi)",
    "floor-ws": "floor: NOTIFY->echo (websockets)",
    "floor-raw": "floor: NOTIFY->echo (raw asyncio)",
}


# ---------------------------------------------------------------------------------------------
# Server probes
# ---------------------------------------------------------------------------------------------

async def metrics(port: int) -> dict[str, float]:
    status, body = await asyncio.to_thread(http_call, port, "GET", "/_ripple/metrics")
    if status != 200:
        raise RuntimeError(f"GET /_ripple/metrics: {status}")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------------------------------------
# CPU accounting over a write phase
# ---------------------------------------------------------------------------------------------

class CpuWindow:
    """CPU used during a window by the server, the Node clients, PostgreSQL for this benchmark
    (the backends connected to the server, plus the cluster's background processes), and
    everything else ("other": other users of the machine, their PostgreSQL backends included;
    it should stay near 0, else a neighbour disturbed the window)."""

    def __init__(self, server_pids: set[int], node_pid: int, admin: Any) -> None:
        self.server_pids, self.node_pid, self.admin = server_pids, node_pid, admin
        self.backends: set[int] = set()

    async def _classify(self) -> None:
        ports = local_tcp_ports(sorted(self.server_pids))
        rows = await self.admin.fetch("SELECT pid, client_port, backend_type FROM pg_stat_activity")
        self.backends |= {r["pid"] for r in rows if r["client_port"] in ports or r["backend_type"] != "client backend"}

    async def begin(self) -> None:
        await self._classify()
        self.start = (process_ticks(), machine_busy_ticks(), time.perf_counter())

    async def stop(self) -> dict[str, Any]:
        (pa, ma, ta), (pb, mb, tb) = self.start, (process_ticks(), machine_busy_ticks(), time.perf_counter())
        await self._classify()
        wall = tb - ta
        used = {pid: ticks - pa.get(pid, ("", 0))[1] for pid, (_, ticks) in pb.items()}

        def pct(ticks: float) -> float:
            return round(100.0 * ticks / CLK_TCK / wall, 1)

        ours = {*self.server_pids, self.node_pid, os.getpid()}
        server_ticks = sum(used.get(pid, 0) for pid in self.server_pids)
        pg = self.backends
        others = sorted(((t, pid) for pid, t in used.items() if pid not in ours and pid not in pg and t > 0), reverse=True)
        busy, total = mb[0] - ma[0], mb[1] - ma[1]
        return {
            "window_s": round(wall, 3),
            "server_cpu_s": server_ticks / CLK_TCK,
            "server_cpu_pct": pct(server_ticks),
            "node_cpu_pct_proc": pct(used.get(self.node_pid, 0)),
            "postgres_cpu_pct": pct(sum(used.get(pid, 0) for pid in pg)),
            "other_cpu_pct": pct(sum(t for t, _ in others)),
            "other_top": ", ".join(f"{pb[pid][0]}[{pid}] {pct(t):g}%" for t, pid in others[:3]),
            "machine_busy_pct": round(100.0 * busy / total, 1) if total else math.nan,
        }


async def wait_quiet(max_wait: float) -> tuple[float, float]:
    """Wait (at most `max_wait` s) for a 1-s window in which the rest of the machine used less than
    OTHER_CPU_WARN % of one core (nothing of this benchmark runs between cases, so that is other
    users of the machine, PostgreSQL included). Returns (seconds waited, last window's %)."""
    waited = 0.0
    me = os.getpid()
    while True:
        pa, ma = process_ticks(), machine_busy_ticks()
        await asyncio.sleep(1.0)
        pb, mb = process_ticks(), machine_busy_ticks()
        mine = pb.get(me, ("", 0))[1] - pa.get(me, ("", 0))[1]
        busy = (mb[0] - ma[0]) - mine
        total = (mb[1] - ma[1]) or 1
        others = 100.0 * busy / total * (os.cpu_count() or 1)  # % of one core
        waited += 1.0
        if others < OTHER_CPU_WARN or waited >= max_wait:
            return waited, round(others, 1)


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------

class Server:
    def __init__(self, kind: str, proc: subprocess.Popen[bytes], ws_port: int, http_port: int) -> None:
        self.kind, self.proc, self.ws_port, self.http_port = kind, proc, ws_port, http_port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> set[int]:
        """The server's processes: with --ripple-workers N, the supervisor and its workers."""
        return group_pids(self.proc.pid)

    def rss_kb(self) -> int:
        return sum(rss_kb(pid) for pid in self.pids())


async def start_server(kind: str, processes: Processes, args: argparse.Namespace, ctx: dict[str, str]) -> Server:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    port = free_port()
    if kind in ("ripple", "ripple-k1"):
        if kind == "ripple-k1":
            env["RIPPLE_LIVE_QUERY_PARALLELISM"] = "1"
        entry = [str(args.ripple_launcher)] if args.ripple_launcher else ["-m", "server.cli"]
        proc = processes.start("ripple", [sys.executable, *entry, "serve", "--port", str(port),
                                          "--dir", str(APP_DIR), "--database-url", args.database_url,
                                          "--db-schema", ctx["ripple_schema"],
                                          *(["--workers", str(args.ripple_workers)] if args.ripple_workers != 1 else [])],
                               env=env)
        server = Server(kind, proc, port, port)
    else:
        http_port = free_port()
        mode = "naive" if kind == "naive" else "floor"
        stack = {"floor-ws": "websockets", "floor-raw": "raw"}.get(kind, "asgi")
        proc = processes.start(kind, [sys.executable, str(BASELINES), mode, "--stack", stack, "--port", str(port),
                                      "--http-port", str(http_port), "--database-url", args.database_url,
                                      "--db-schema", ctx["base_schema"], "--channel", ctx["base_channel"]], env=env)
        server = Server(kind, proc, port, http_port)
    await wait_ready(proc, server.http_port)
    if kind in ("ripple", "ripple-k1"):  # load the query's code paths before the RSS baseline
        status, body = await asyncio.to_thread(http_call, port, "POST", "/api/query",
                                               {"path": "counters:get", "args": {"name": PREFIX + "0"}, "format": "json"})
        if status != 200 or not body.startswith(b'{"status":"success"'):
            raise RuntimeError(f"warm-up query failed: {status} {body[:300]!r}")
    else:  # wait until the websocket side accepts connections too
        await wait_port(proc, port, f"{kind} websocket port not open")
    return server


# ---------------------------------------------------------------------------------------------
# One case: start a server, connect the Node clients, subscribe, write, measure
# ---------------------------------------------------------------------------------------------

class NodeClients(NodeProcess):
    """bench/fanout_clients.mjs (its messages can be large: a 16 MiB line limit)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(CLIENTS_JS, config, log_prefix="fanout-node-", limit=1 << 24)


LIVE_NODES: list[NodeClients] = []


async def run_case(case: dict[str, Any], kind: str, processes: Processes, args: argparse.Namespace,
                   ctx: dict[str, str], admin: Any, value_base: int, profile_path: Path | None = None) -> dict[str, Any]:
    clients, subs, distinct, writes = case["clients"], case["subs"], case["distinct"], case["writes"]
    server = await start_server(kind, processes, args, ctx)
    node: NodeClients | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.sleep(0.5)
        rss_before = server.rss_kb()
        node = NodeClients({
            "wsUrl": f"ws://{HOST}:{server.ws_port}/api/sync",
            "writeUrl": f"http://{HOST}:{server.http_port}/api/mutation",
            "udfPath": "counters:with_shared" if case["part"] == "d" else "counters:get", "writePath": "counters:put",
            "prefix": D_PREFIX if case["part"] == "d" else PREFIX, "shared": SHARED if case["part"] == "d" else None,
            "clients": clients, "subsPerClient": subs // clients, "distinct": distinct,
            "writes": writes, "warmupWrites": args.warmup_writes,
            "gapMs": {"a": args.a_gap_ms, "b": args.b_gap_ms, "d": args.d_gap_ms}[case["part"]],
            "writeTimeoutMs": int(args.write_timeout * 1000), "maxWriteSeconds": args.case_seconds,
            "valueBase": value_base, "connectConcurrency": 64, "readyTimeoutMs": 600_000,
        })
        LIVE_NODES.append(node)
        await node.start()
        assert node.proc is not None
        ready = await node.expect("ready", 660)
        await asyncio.sleep(1.0)
        rss_subscribed = server.rss_kb()
        m1 = await metrics(server.http_port)
        if profile_path is not None:
            spy = processes.start("py-spy", [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.pid),
                                             "--rate", "200", "--native", "--format", "raw",
                                             "--output", str(profile_path)])
            await asyncio.sleep(2.0)  # py-spy attaches
        cpu = CpuWindow(server.pids(), node.proc.pid, admin)
        await cpu.begin()
        node.send("go")
        await node.expect("writing", 30)
        done = await node.expect("done", args.case_seconds + (writes + args.warmup_writes) * 0.05
                                 + 2 * args.write_timeout + 120)
        window = await cpu.stop()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
            Processes.stop(spy, keep_log=False)
        await asyncio.sleep(0.5)  # stray re-executions would show up in the counter
        m2 = await metrics(server.http_port)
        rss_after_writes = server.rss_kb()
        sent = done["writes"] + done["warmup_writes"]
        seen_subs = m1.get("ripple_subscriptions")
        if not kind.startswith("floor") and seen_subs != subs:
            print(f"  !! {kind} reports {seen_subs} subscriptions, expected {subs}", flush=True)
        result = {
            "server": kind, **{k: case[k] for k in ("part", "clients", "subs", "distinct")},
            "subs_per_query": subs // distinct,
            "connect_s": round(ready["opened_ms"] / 1000, 3), "ready_s": round(ready["ready_ms"] / 1000, 3),
            "server_subscriptions": m1.get("ripple_subscriptions"),
            "executions_per_write": (m2.get("ripple_query_executions_total", 0) - m1.get("ripple_query_executions_total", 0)) / sent
            if sent else math.nan,
            "rss_before_kb": rss_before, "rss_subscribed_kb": rss_subscribed, "rss_after_writes_kb": rss_after_writes,
            "rss_per_sub_kb": (rss_subscribed - rss_before) / subs,
            "server_cpu_ms_per_write": 1000 * window["server_cpu_s"] / sent if sent else math.nan,
            **{k: v for k, v in done.items() if k != "event"},
            **window,
        }
        return result
    finally:
        if spy is not None and spy.poll() is None:
            Processes.stop(spy)
        if node is not None:
            await node.close()
            LIVE_NODES.remove(node)
        Processes.stop(server.proc, keep_log=args.keep_server_logs)
        if args.keep_server_logs:
            print(f"    server log: {server.proc.log_path}", flush=True)  # type: ignore[attr-defined]
        processes.procs.remove(server.proc)


# ---------------------------------------------------------------------------------------------
# Profiles (py-spy raw/collapsed stacks -> top functions)
# ---------------------------------------------------------------------------------------------

# Frames on (nearly) every stack: the event loop and the process's entry points.
LOOP_FILES = {"asyncio/base_events.py", "asyncio/events.py", "asyncio/runners.py", "<frozen runpy>", "server/cli.py",
              "server/runner.py", "uvicorn/server.py", "uvicorn/_compat.py"}
GC_FRAMES = {"gc_collect_main", "gc_collect_with_callback", "gc_collect_generations", "collect", "collect_with_callback",
             "collect_generations", "gc_collect_impl", "_PyGC_Collect"}
IDLE_FRAMES = {"select", "epoll_wait", "epoll_pwait", "__GI_epoll_wait", "__GI_epoll_pwait"}


def keep_profile(path: Path, directory: str | None, key: str) -> None:
    """Copy the collapsed stacks to `directory` (if given), then delete the temporary file."""
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(directory) / f"fanout-{key}.folded")
    path.unlink(missing_ok=True)


def summarize_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks, recorded with --native, into shares of the server's busy
    samples: cyclic GC (gc_collect_* anywhere on the stack); per Python function inclusive
    (anywhere on the stack, once per sample; the event loop's own frames and frames on >= 97% of
    the stacks left out); per innermost Python frame (native time -- socket writes, uvloop,
    orjson, asyncpg's protocol -- charged to the Python caller); per innermost native frame; per
    source file or shared object of the innermost frame. Samples waiting in epoll/select are idle
    and reported apart."""
    self_counts: dict[str, int] = defaultdict(int)
    incl_counts: dict[str, int] = defaultdict(int)
    file_counts: dict[str, int] = defaultdict(int)
    native_counts: dict[str, int] = defaultdict(int)
    busy = idle = gc_samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            where = where[:-1] if where.endswith(")") else where
            head, colon, tail_digits = where.rpartition(":")
            file = head if colon and tail_digits.isdigit() else where  # drop line numbers (Python and C)
            for marker in ("/site-packages/", f"{ROOT}/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
                if marker in file:
                    file = file.split(marker, 1)[1]
                    break
            frames.append((name, file))
        if not frames:
            continue
        if frames[-1][0] in IDLE_FRAMES or frames[-1][0].endswith("Selector.select"):
            idle += count
            continue
        busy += count
        if any(name in GC_FRAMES for name, _ in frames):
            gc_samples += count
        python_frames = [f for f in frames if f[1].endswith(".py") or f[1].startswith("<")]
        innermost_py = python_frames[-1] if python_frames else frames[-1]
        self_counts[f"{innermost_py[0]} ({innermost_py[1]})"] += count
        if frames[-1] not in python_frames:
            native_counts[f"{frames[-1][0]} ({frames[-1][1]})"] += count
        file_counts[frames[-1][1]] += count
        for name, file in set(python_frames):
            if file not in LOOP_FILES:
                incl_counts[f"{name} ({file})"] += count

    def ranked(counts: dict[str, int], limit: int, skip_above: float = 101.0) -> list[tuple[str, float]]:
        rows = [(f, round(100.0 * c / busy, 1)) for f, c in sorted(counts.items(), key=lambda kv: -kv[1])]
        return [r for r in rows if r[1] < skip_above][:limit]

    if not busy:
        return {"busy_samples": 0, "idle_samples": idle, "gc_pct": 0.0, "self_pct": [], "inclusive_pct": [],
                "native_self_pct": [], "file_self_pct": []}
    return {"busy_samples": busy, "idle_samples": idle, "gc_pct": round(100.0 * gc_samples / busy, 1),
            "self_pct": ranked(self_counts, top), "inclusive_pct": ranked(incl_counts, top, skip_above=97.0),
            "native_self_pct": ranked(native_counts, 10), "file_self_pct": ranked(file_counts, 12)}


# ---------------------------------------------------------------------------------------------
# Machine information, aggregation, reporting
# ---------------------------------------------------------------------------------------------

def machine_info(pg_version: str) -> dict[str, Any]:
    """The shared machine description (the code digest covers server/, the app, the Node clients
    and bench/stats.mjs, the baselines, this script and bench/common.py), plus Node, its `ws` package and the fd limit."""
    ws_version = None
    with contextlib.suppress(Exception):
        ws_version = json.loads((BENCH / "node_modules" / "ws" / "package.json").read_text())["version"]
    return {
        **describe_machine(pg_version, ("uvicorn", "starlette", "websockets", "asyncpg", "orjson", "uvloop", "httptools"),
                           [*ROOT.joinpath("server").rglob("*.py"), *APP_DIR.rglob("*.py"), CLIENTS_JS, BENCH / "stats.mjs", BASELINES, SCRIPT],
                           git_status_args=("--untracked-files=no", "--", "server", "bench")),
        "node": command_output(["node", "--version"]),
        "node_ws": ws_version,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
    }

def med(runs: list[dict[str, Any]], path: str) -> float:
    values = []
    for r in runs:
        v: Any = r
        for part in path.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            values.append(float(v))
    if not values:
        return math.nan
    return max(values) if path.endswith(".max") else statistics.median(values)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for metric in ("send_to_receive_ms", "commit_to_receive_ms", "commit_to_last_ms", "write_complete_ms", "first_delivery_ms",
                   "write_rtt_ms"):
        out[metric] = {p: med(runs, f"{metric}.{p}") for p in ("p50", "p90", "p99", "max")}
        out[metric]["n"] = sum(r[metric]["n"] for r in runs)
    for key in ("executions_per_write", "deliveries_per_write", "rss_per_sub_kb", "rss_before_kb", "rss_subscribed_kb",
                "rss_after_writes_kb", "server_cpu_ms_per_write", "server_cpu_pct", "node_cpu_pct",
                "node_event_loop_utilization", "postgres_cpu_pct", "other_cpu_pct", "machine_busy_pct", "ready_s", "writes"):
        out[key] = med(runs, key)
    for key in ("timed_out_writes", "missing_deliveries", "failed_writes", "unexpected_updates"):
        out[key] = sum(r.get(key, 0) for r in runs)
    out["version_violations"] = sum(r["errors"]["versionViolations"] for r in runs)
    out["socket_errors"] = sum(r["errors"]["socketErrors"] + r["errors"]["unexpectedCloses"] + r["errors"]["fatalErrors"]
                               + r["errors"]["queryFailed"] for r in runs)
    return out


def fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def report(cases: list[dict[str, Any]], agg: dict[tuple[str, str], dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    a_case = next((c for c in cases if c["part"] == "a"), None)
    b_cases = [c for c in cases if c["part"] == "b"]
    head = (f"  {'server':34} {'send->receive ms':>22} {'commit->recv ms':>16} {'last client ms':>15} {'mut RTT':>8} "
            f"{'re-exec':>8} {'srv CPU':>8} {'node':>5} {'RSS KB':>7}")
    sub = (f"  {'':34} {'p50':>7} {'p99':>7} {'max':>6} {'p50':>7} {'p99':>8} {'p50':>7} {'p99':>7} {'p50 ms':>8} "
           f"{'/write':>8} {'ms/wr':>8} {'ELU':>5} {'/sub':>7}")

    def row(label: str, r: dict[str, Any]) -> str:
        s, c, w = r["send_to_receive_ms"], r["commit_to_receive_ms"], r["write_complete_ms"]
        flags = []
        if r["version_violations"]:
            flags.append(f"{r['version_violations']} VERSION VIOLATIONS")
        if r["timed_out_writes"] or r["missing_deliveries"]:
            flags.append(f"{r['timed_out_writes']} writes timed out, {r['missing_deliveries']} deliveries missing")
        if r["failed_writes"]:
            flags.append(f"{r['failed_writes']} failed writes")
        if r["unexpected_updates"]:
            flags.append(f"{r['unexpected_updates']} unexpected updates")
        if r["socket_errors"]:
            flags.append(f"{r['socket_errors']} socket/protocol errors")
        if r["other_cpu_pct"] > OTHER_CPU_WARN:
            flags.append(f"neighbours used {r['other_cpu_pct']:.0f}% CPU")
        return (f"  {label:34} {fmt(s['p50'], 2):>7} {fmt(s['p99'], 2):>7} {fmt(s['max'], 0):>6} {fmt(c['p50'], 2):>7} "
                f"{fmt(c['p99'], 2):>8} {fmt(w['p50'], 2):>7} {fmt(w['p99'], 2):>7} {fmt(r['write_rtt_ms']['p50'], 2):>8} "
                f"{fmt(r['executions_per_write'], 2):>8} {fmt(r['server_cpu_ms_per_write'], 1):>8} "
                f"{fmt(r['node_event_loop_utilization'], 2):>5} {fmt(r['rss_per_sub_kb'], 1):>7}"
                + (("   !! " + "; ".join(flags)) if flags else ""))

    if a_case is not None:
        print(f"\n(a) {a_case['clients']:,} websocket clients on ONE query; {a_case['writes']} sequential writes to it "
              f"(median over runs; max = largest)")
        print(head)
        print(sub)
        for kind in servers:
            r = agg.get(("a", kind))
            if r:
                print(row(SERVERS[kind], r))
        rip = agg.get(("a", "ripple"))
        if rip:
            p99 = rip["send_to_receive_ms"]["p99"]
            parts = [f"Ripple p99 send->receive {fmt(p99, 1)} ms"]
            for kind in ("floor", "floor-ws", "floor-raw", "naive"):
                if ("a", kind) in agg:
                    parts.append(f"{ratio(p99, agg[('a', kind)]['send_to_receive_ms']['p99'])} {kind}")
            print("  " + parts[0] + " = " + ", ".join(parts[1:]) if len(parts) > 1 else "  " + parts[0])
            ok = p99 <= 50.0 and not rip["timed_out_writes"]
            targets["a_p99_le_50ms"] = {"value_ms": p99, "met": ok}
            c99 = rip["commit_to_receive_ms"]["p99"]
            targets["a_commit_to_receive_p99_le_50ms"] = {"value_ms": c99, "met": c99 <= 50.0}
            print(f"  target (a) p99 <= 50 ms: send->receive {fmt(p99, 1)} ms {mark(ok)}; "
                  f"commit->receive {fmt(c99, 1)} ms {mark(c99 <= 50.0)}")

    if b_cases:
        print(f"\n(b) {b_cases[0]['clients']:,} websocket clients, S subscriptions over S/{b_cases[0]['subs'] // b_cases[0]['distinct']} "
              f"distinct queries ({b_cases[0]['subs'] // b_cases[0]['distinct']} subscribers each); each write touches one query")
        print("    'last client' = write complete: all subscriptions of the written query received it")
        for c in b_cases:
            print(f"  S = {c['subs']:,} subscriptions, {c['distinct']:,} distinct queries, "
                  f"{c['subs'] // c['clients']} per client")
            print(head)
            print(sub)
            for kind in servers:
                r = agg.get((f"b{c['subs']}", kind))
                if r:
                    print(row(SERVERS[kind], r))
            rip = agg.get((f"b{c['subs']}", "ripple"))
            if rip:
                parts = []
                for kind in ("floor", "floor-ws", "floor-raw", "naive"):
                    other = agg.get((f"b{c['subs']}", kind))
                    if other:
                        parts.append(f"{ratio(rip['write_complete_ms']['p50'], other['write_complete_ms']['p50'])} {kind}")
                if parts:
                    print("  Ripple write-complete p50 = " + ", ".join(parts))
        rip_rows = [(c, agg[(f"b{c['subs']}", "ripple")]) for c in b_cases if (f"b{c['subs']}", "ripple") in agg]
        if rip_rows:
            p50s = {c["subs"]: r["write_complete_ms"]["p50"] for c, r in rip_rows}
            all_le = all(v <= 10.0 for v in p50s.values())
            first, last = rip_rows[0][1]["write_complete_ms"]["p50"], rip_rows[-1][1]["write_complete_ms"]["p50"]
            flat = last <= 1.5 * first
            execs = {c["subs"]: r["executions_per_write"] for c, r in rip_rows}
            exact = all(abs(v - 1.0) < 1e-9 for v in execs.values())
            targets["b_p50_le_10ms"] = {"values_ms": p50s, "met": all_le}
            targets["b_flat"] = {"p50_smallest_ms": first, "p50_largest_ms": last, "ratio": last / first if first else None,
                                 "threshold": 1.5, "met": flat}
            targets["b_one_execution_per_write"] = {"values": execs, "met": exact}
            print("  target (b) write-complete p50 <= 10 ms at every S: "
                  + ", ".join(f"{s:,}: {fmt(v, 2)} ms" for s, v in p50s.items()) + f"  {mark(all_le)}")
            print(f"  target (b) flat from S={rip_rows[0][0]['subs']:,} to S={rip_rows[-1][0]['subs']:,} "
                  f"(<= 1.5x): {fmt(first, 2)} -> {fmt(last, 2)} ms = {ratio(last, first)}  {mark(flat)}")
            print("  target (b) exactly 1 re-execution per write: "
                  + ", ".join(f"{s:,}: {fmt(v, 3)}" for s, v in execs.items()) + f"  {mark(exact)}")

    print("\n(c) server RSS: (RSS with all subscriptions - RSS after start-up) / subscriptions")
    print(f"  {'case':36} " + " ".join(f"{k:>16}" for k in servers))
    for c in cases:
        if c["part"] == "d":
            continue
        key = c["key"]
        label = f"({c['part']}) {c['subs']:,} subs on {c['clients']:,} sockets"
        cells = []
        for kind in servers:
            r = agg.get((key, kind))
            cells.append(f"{fmt(r['rss_per_sub_kb'], 1)} KB ({fmt(r['rss_subscribed_kb'] / 1024, 0)} MB)" if r else "-")
        print(f"  {label:36} " + " ".join(f"{x:>16}" for x in cells))
    if b_cases and len(b_cases) >= 2:
        lo, hi = b_cases[0], b_cases[-1]
        r_lo, r_hi = agg.get((f"b{lo['subs']}", "ripple")), agg.get((f"b{hi['subs']}", "ripple"))
        if r_lo and r_hi:
            marginal = (r_hi["rss_subscribed_kb"] - r_lo["rss_subscribed_kb"]) / (hi["subs"] - lo["subs"])
            targets["c_marginal_kb_per_sub"] = marginal
            print(f"  Ripple marginal cost, same {hi['clients']:,} sockets, S {lo['subs']:,} -> {hi['subs']:,}: "
                  f"{fmt(marginal, 1)} KB per added subscription (and shared query)")
    if b_cases:
        r = agg.get((f"b{b_cases[-1]['subs']}", "ripple"))
        if r:
            ok = r["rss_per_sub_kb"] <= 20.0
            targets["c_rss_per_sub_le_20kb"] = {"value_kb": r["rss_per_sub_kb"], "subs": b_cases[-1]["subs"], "met": ok}
            print(f"  target (c) <= 20 KB per subscription at S={b_cases[-1]['subs']:,}: {fmt(r['rss_per_sub_kb'], 1)} KB "
                  f"{mark(ok)}")
    d_case = next((c for c in cases if c["part"] == "d"), None)
    if d_case is not None:
        print(f"\n(d) {d_case['clients']:,} clients, each on its own query; every write changes all {d_case['distinct']:,} "
              "results (distinct executions)")
        print(f"  {'server':34} {'commit->last client ms':>24} {'last client ms':>15} {'commit->recv ms':>16} "
              f"{'re-exec':>8} {'srv CPU':>8} {'pg CPU':>7}")
        print(f"  {'':34} {'p50':>7} {'p99':>8} {'max':>7} {'p50':>7} {'p99':>7} {'p50':>7} {'p99':>8} {'/write':>8} "
              f"{'ms/wr':>8} {'%':>7}")
        for kind in ("ripple-k1", "ripple"):
            r = agg.get(("d", kind))
            if r:
                cl, w, c = r["commit_to_last_ms"], r["write_complete_ms"], r["commit_to_receive_ms"]
                lost = f"   !! {r['timed_out_writes']} writes timed out" if r["timed_out_writes"] else ""
                print(f"  {SERVERS[kind]:34} {fmt(cl['p50'], 1):>7} {fmt(cl['p99'], 1):>8} {fmt(cl['max'], 0):>7} "
                      f"{fmt(w['p50'], 1):>7} {fmt(w['p99'], 1):>7} {fmt(c['p50'], 1):>7} {fmt(c['p99'], 1):>8} "
                      f"{fmt(r['executions_per_write'], 1):>8} {fmt(r['server_cpu_ms_per_write'], 1):>8} "
                      f"{fmt(r['postgres_cpu_pct'], 0):>7}{lost}")
        rip, k1 = agg.get(("d", "ripple")), agg.get(("d", "ripple-k1"))
        if rip:
            p99 = rip["commit_to_last_ms"]["p99"]
            execs = rip["executions_per_write"]
            ok = p99 <= 150.0 and not rip["timed_out_writes"]
            targets["d_commit_to_last_p99_le_150ms"] = {"value_ms": p99, "met": ok,
                                                        "k1_value_ms": k1["commit_to_last_ms"]["p99"] if k1 else None}
            targets["d_executions_per_write"] = {"value": execs, "expected": d_case["distinct"],
                                                 "met": abs(execs - d_case["distinct"]) < 1e-6}
            vs = f" ({ratio(p99, k1['commit_to_last_ms']['p99'])} of parallelism 1)" if k1 else ""
            print(f"  target (d) commit->last client p99 <= 150 ms: {fmt(p99, 1)} ms{vs} {mark(ok)}; "
                  f"re-executions per write {fmt(execs, 1)} (expected {d_case['distinct']:,})")
    return targets


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = []
    if "a" in args.cases:
        cases.append({"part": "a", "key": "a", "clients": args.clients, "subs": args.clients, "distinct": 1,
                      "writes": args.a_writes})
    for s in args.b_subs if "b" in args.cases else []:
        if s % args.b_clients or s % args.b_subs_per_query:
            raise SystemExit(f"--b-subs {s} must be a multiple of --b-clients ({args.b_clients}) "
                             f"and of --b-subs-per-query ({args.b_subs_per_query})")
        distinct = s // args.b_subs_per_query
        if s // args.b_clients > distinct:
            raise SystemExit(f"--b-subs {s}: a client would hold the same query twice")
        cases.append({"part": "b", "key": f"b{s}", "clients": args.b_clients, "subs": s, "distinct": distinct,
                      "writes": args.b_writes})
    if "d" in args.cases:
        cases.append({"part": "d", "key": "d", "clients": args.d_queries, "subs": args.d_queries,
                      "distinct": args.d_queries, "writes": args.d_writes})
    return cases


def case_servers(case: dict[str, Any], servers: list[str]) -> list[str]:
    """(d) runs on Ripple only, with parallelism 1 and its default; (a) and (b) on the rest."""
    if case["part"] == "d":
        return ["ripple-k1", "ripple"] if "ripple" in servers else []
    return [kind for kind in servers if kind != "ripple-k1"]


def ensure_node_modules() -> None:
    if shutil.which("node") is None:
        raise SystemExit("node is not on PATH (Node 20 needed for bench/fanout_clients.mjs)")
    if not (BENCH / "node_modules" / "ws" / "package.json").exists():
        print("installing the load generator's dependency (npm ci --prefix bench) ...", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH, check=True)


async def bench(args: argparse.Namespace) -> None:
    import asyncpg

    cases = plan(args)
    servers = args.servers
    token = secrets.token_hex(4)
    ctx = {"ripple_schema": f"fanout_{token}", "base_schema": f"fanout_{token}_base", "base_channel": f"fanout_{token}_base"}
    processes = Processes("fanout")
    admin = await asyncpg.connect(args.database_url)
    try:
        pg_version = await admin.fetchval("SELECT version()")
        info = machine_info(pg_version)
        max_distinct = max(c["distinct"] for c in cases)
        print(f"commit {info['git_commit'][:12]}{' (server/ or bench/ differ from it)' if info['git_dirty'] else ''}, "
              f"code sha256 {info['code_sha256'][:12]}; {info['nproc']} CPUs ({info['cpu_model']}); "
              f"Python {info['python']}; Node {info['node']} ws {info['node_ws']}; {pg_version.split(' on ')[0]}")
        print(f"schemas {ctx['ripple_schema']} (+ _base); runs {args.runs}; servers {', '.join(servers)}; "
              f"gaps (a) {args.a_gap_ms:g} / (b) {args.b_gap_ms:g} ms; warm-up writes {args.warmup_writes}; write phase capped at {args.case_seconds:g} s "
              f"per case; fd limit {info['fd_limit'][0]}", flush=True)

        # Data: counters q0 .. q{max_distinct-1} = 0, in Ripple (through its own mutation) and in
        # the baselines' table.
        if "ripple" in servers:
            server = await start_server("ripple", processes, args, ctx)
            for start in range(0, max_distinct, 500):
                status, body = await asyncio.to_thread(http_call, server.http_port, "POST", "/api/mutation", {
                    "path": "counters:seed", "args": {"prefix": PREFIX, "start": start,
                                                      "count": min(500, max_distinct - start)}, "format": "json"})
                if status != 200 or not body.startswith(b'{"status":"success"'):
                    raise RuntimeError(f"seeding failed: {status} {body[:300]!r}")
            Processes.stop(server.proc)
            processes.procs.remove(server.proc)
        await admin.execute(f'CREATE SCHEMA "{ctx["base_schema"]}"')
        await admin.execute(f'CREATE TABLE "{ctx["base_schema"]}".counters (name text PRIMARY KEY, value bigint NOT NULL)')
        await admin.execute(f'INSERT INTO "{ctx["base_schema"]}".counters '
                            f"SELECT '{PREFIX}' || i, 0 FROM generate_series(0, $1 - 1) AS i", max_distinct)
        print(f"seeded {max_distinct} counters", flush=True)

        per_case: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        discarded: list[dict[str, Any]] = []
        value_base = 0
        started = time.monotonic()
        for run in range(1, args.runs + 1):
            print(f"\n-- run {run}/{args.runs}", flush=True)
            for case in cases:
                for kind in case_servers(case, servers):
                    attempts = []
                    for attempt in range(1, args.retries_disturbed + 2):
                        waited, before = await wait_quiet(args.quiet_wait)
                        value_base += 1_000_000
                        result = await run_case(case, kind, processes, args, ctx, admin, value_base)
                        result.update(run=run, attempt=attempt, quiet_wait_s=waited, other_cpu_pct_before=before)
                        attempts.append(result)
                        if result["other_cpu_pct"] <= OTHER_CPU_WARN:
                            break
                        if attempt <= args.retries_disturbed:
                            print(f"  {case['key']:>7} {kind:9} disturbed: neighbours used {result['other_cpu_pct']:.0f}% "
                                  f"of a core ({result['other_top']}); measuring again", flush=True)
                    result = min(attempts, key=lambda r: r["other_cpu_pct"])
                    discarded.extend({"case": case["key"], **r} for r in attempts if r is not result)
                    per_case[(case["key"], kind)].append(result)
                    s, w = result["send_to_receive_ms"], result["write_complete_ms"]
                    print(f"  {case['key']:>7} {kind:9} subs {case['subs']:>6,}: send->recv p50 {fmt(s['p50'], 2)} "
                          f"p99 {fmt(s['p99'], 2)} max {fmt(s['max'], 1)} ms; write complete p50 {fmt(w['p50'], 2)} "
                          f"p99 {fmt(w['p99'], 2)} ms; {result['writes']} writes; re-exec/write "
                          f"{fmt(result['executions_per_write'], 2)}; srv CPU {fmt(result['server_cpu_ms_per_write'], 1)} "
                          f"ms/write; RSS {fmt(result['rss_per_sub_kb'], 1)} KB/sub; node ELU "
                          f"{fmt(result['node_event_loop_utilization'], 2)}; ready in {result['ready_s']:.1f} s"
                          + (f"; !! neighbours {result['other_cpu_pct']:.0f}% CPU ({result['other_top']})"
                             if result["other_cpu_pct"] > OTHER_CPU_WARN else ""), flush=True)
        elapsed = time.monotonic() - started

        agg = {key: aggregate(runs) for key, runs in per_case.items()}
        targets = report(cases, agg, servers)

        profiles: dict[str, Any] = {}
        if args.profile and "ripple" in servers:
            print("\nProfiling Ripple under py-spy (extra runs, not counted above) ...", flush=True)
            for case in [cases[0], *([c for c in cases if c["part"] == "b"][-1:])]:
                value_base += 1_000_000
                path = Path(tempfile.mkstemp(prefix=f"fanout-profile-{case['key']}-", suffix=".txt")[1])
                try:
                    result = await run_case(case, "ripple", processes, args, ctx, admin, value_base, profile_path=path)
                    summary = summarize_profile(path)
                finally:
                    keep_profile(path, args.profile_dir, case["key"])
                summary["server_cpu_ms_per_write"] = result["server_cpu_ms_per_write"]
                summary["send_to_receive_p99_ms_under_profiler"] = result["send_to_receive_ms"]["p99"]
                profiles[case["key"]] = summary
                print(f"\n  {case['key']}: {summary['busy_samples']} busy samples (+{summary['idle_samples']} idle) of Ripple over "
                      f"{result['writes'] + result['warmup_writes']} writes ({fmt(result['server_cpu_ms_per_write'], 1)} ms "
                      f"CPU/write under the profiler); shares of busy samples:")
                print(f"  cyclic GC (gc_collect_* on the stack): {summary['gc_pct']:.1f}%")
                print("  inclusive (Python function anywhere on the stack; event-loop frames left out):")
                for name, share in summary["inclusive_pct"]:
                    print(f"    {share:5.1f}%  {name}")
                print("  self, innermost Python frame (native time charged to its Python caller):")
                for name, share in summary["self_pct"][:15]:
                    print(f"    {share:5.1f}%  {name}")
                print("  self, innermost native frame (when the sample was in C):")
                for name, share in summary["native_self_pct"]:
                    print(f"    {share:5.1f}%  {name}")
                print("  self, by source file / shared object of the innermost frame:")
                for name, share in summary["file_self_pct"]:
                    print(f"    {share:5.1f}%  {name}")

        info_end = machine_info(pg_version)
        changed = [k for k in ("git_commit", "code_sha256", "packages") if info_end[k] != info[k]]
        if changed:
            print(f"\n!! changed while the benchmark ran: {', '.join(changed)} (other people's commits or installs); "
                  "figures mix versions -- run again", flush=True)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out_path = RESULTS_DIR / f"fanout-{stamp}.json"
        out_path.write_text(json.dumps({
            "benchmark": "fanout",
            "timestamp_utc": stamp,
            "quick": args.quick,
            "machine": info,
            "changed_during_run": {k: info_end[k] for k in changed},
            "settings": {k: v for k, v in vars(args).items()},
            "definitions": {
                "send_to_receive_ms": "t1 - t0 in the Node process: t0 = the writer sends POST /api/mutation, t1 = a "
                                      "client's ws 'message' event for the Transition carrying the written value; one "
                                      "sample per (write, subscription)",
                "commit_to_receive_ms": "t1 (performance.timeOrigin + performance.now()) - endVersion.ts of that "
                                        "Transition (commit timestamp, PostgreSQL clock_timestamp() in ns)",
                "write_complete_ms": "per write: the last affected subscription's t1 - t0",
                "first_delivery_ms": "per write: the first affected subscription's t1 - t0",
                "write_rtt_ms": "per write: t0 -> the mutation's HTTP response",
                "write_complete_series_ms": "per run: write_complete_ms of each counted write, in order",
                "executions_per_write": "delta ripple_query_executions_total over the write phase / writes sent",
                "rss_per_sub_kb": "(VmRSS once all subscriptions got their first result + 1 s - VmRSS after start-up "
                                  "and one query) / subscriptions",
                "server_cpu_ms_per_write": "server process user+system CPU over the write phase / writes sent",
                "aggregation": "per run: nearest-rank percentiles over all samples of the run; across runs: median "
                               "(max: largest)",
            },
            "servers": SERVERS,
            "cases": cases,
            "elapsed_s": round(elapsed, 1),
            "median": {f"{k[0]}/{k[1]}": v for k, v in agg.items()},
            "targets": targets,
            "runs": {f"{k[0]}/{k[1]}": v for k, v in per_case.items()},
            "discarded_disturbed_attempts": discarded,
            "profiles": profiles,
        }, indent=2, default=str) + "\n")
        print(f"\nwrote {out_path.relative_to(ROOT)} (measured runs took {elapsed:.0f} s)")
    finally:
        for node in list(LIVE_NODES):
            with contextlib.suppress(Exception):
                if node.proc is not None and node.proc.returncode is None:
                    node.proc.kill()
        processes.stop_all()
        for schema in (ctx["ripple_schema"], ctx["base_schema"]):
            with contextlib.suppress(Exception):
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fast sanity run: 100 clients in (a), 100 clients with 100 and 1,000 subscriptions in (b), "
                             "20/50 writes, 1 run (explicit flags still win)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions of the whole set of cases (default 3)")
    parser.add_argument("--clients", type=int, default=None, help="(a) websocket clients on one query (default 1000)")
    parser.add_argument("--a-writes", type=int, default=None, help="(a) counted writes per case (default 50)")
    parser.add_argument("--b-clients", type=int, default=None, help="(b) websocket clients (default 1000)")
    parser.add_argument("--b-subs", default=None, help="(b) total subscriptions, comma-separated (default 1000,5000,10000)")
    parser.add_argument("--b-subs-per-query", type=int, default=10, help="(b) subscribers per distinct query (default 10)")
    parser.add_argument("--b-writes", type=int, default=None, help="(b) counted writes per case (default 200)")
    parser.add_argument("--warmup-writes", type=int, default=5, help="uncounted writes at the start of each case (default 5)")
    parser.add_argument("--a-gap-ms", type=float, default=200.0,
                        help="(a) pause after each completed write, so that each write meets an idle server (default 200)")
    parser.add_argument("--b-gap-ms", type=float, default=20.0, help="(b) pause after each completed write (default 20)")
    parser.add_argument("--d-queries", type=int, default=None,
                        help="(d) distinct queries, one client each, all invalidated by every write (default 1000)")
    parser.add_argument("--d-writes", type=int, default=None, help="(d) counted writes per case (default 20)")
    parser.add_argument("--d-gap-ms", type=float, default=200.0, help="(d) pause after each completed write (default 200)")
    parser.add_argument("--cases", default="a,b,d", help="which cases to run, comma-separated (default a,b,d)")
    parser.add_argument("--write-timeout", type=float, default=30.0, help="seconds to wait for a write's deliveries (default 30)")
    parser.add_argument("--case-seconds", type=float, default=30.0,
                        help="cap on one case's write phase; slow servers (the naive baseline) do fewer writes (default 30)")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each case, wait up to this many seconds for the rest of the machine to use less "
                             f"than {OTHER_CPU_WARN:g}%% of a core (default 30)")
    parser.add_argument("--retries-disturbed", type=int, default=1,
                        help="measure a case again (at most this often) when other processes used more than "
                             f"{OTHER_CPU_WARN:g}%% of a core during its write phase; the least disturbed attempt is kept "
                             "(default 1)")
    parser.add_argument("--servers", default="ripple,naive,floor,floor-ws",
                        help="which servers to run (default ripple,naive,floor,floor-ws; also ripple-k1, floor-raw)")
    parser.add_argument("--ripple-workers", type=int, default=1, metavar="N",
                        help="run Ripple as `ripple serve --workers N` (default 1; its RSS and CPU are the group's)")
    parser.add_argument("--profile", action="store_true", help="afterwards, profile Ripple's (a) and largest (b) case with py-spy")
    parser.add_argument("--profile-dir", default=None, help="keep the py-spy collapsed stacks in this directory")
    parser.add_argument("--ripple-launcher", default=None,
                        help="experiments only: a Python script run instead of `-m server.cli` (same arguments), e.g. "
                             "to try interpreter settings without touching server/")
    parser.add_argument("--keep-server-logs", action="store_true", help="keep each server's log file and print its path")
    parser.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL URL (default {DEFAULT_DB})")
    args = parser.parse_args()
    quick = {"runs": 1, "clients": 100, "a_writes": 20, "b_clients": 100, "b_subs": "100,1000", "b_writes": 50,
             "d_queries": 200, "d_writes": 10}
    full = {"runs": 3, "clients": 1000, "a_writes": 50, "b_clients": 1000, "b_subs": "1000,5000,10000", "b_writes": 200,
            "d_queries": 1000, "d_writes": 20}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.b_subs = [int(x) for x in str(args.b_subs).split(",") if x.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if args.cases - {"a", "b", "d"}:
        raise SystemExit(f"unknown cases: {', '.join(sorted(args.cases - {'a', 'b', 'd'}))} (choose from a, b, d)")
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(sorted(unknown))} (choose from {', '.join(SERVERS)})")
    # Every client socket is an fd in the Node process and in the server; children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max(args.clients, args.b_clients, args.d_queries) + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
        if hard < need:
            print(f"warning: fd limit {hard} is below the {need} this run needs", file=sys.stderr)
    ensure_node_modules()

    run_cancellable(lambda: bench(args), "interrupted; processes stopped and schemas dropped")


if __name__ == "__main__":
    main()
