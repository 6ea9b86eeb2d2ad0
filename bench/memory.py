"""Server memory per idle websocket client and per live subscription.

What is measured
----------------
RSS is the server process's VmRSS (/proc/<pid>/status), read after a settle pause (--settle, 2 s)
at each step. Every case starts a fresh `python -m server.cli serve` (its default configuration,
one process) on bench/fanout_app (one table; `counters:get(name)` reads one index range; no
counter rows exist, so every query reads an empty range and returns 0), then:

* warm-up: one HTTP query, and 10 websocket clients that connect, subscribe to one query and
  close (the code paths of a connection are loaded before the baseline is read);
* RSS0, the baseline.

Clients are one Node process (bench/memory_clients.mjs, the `ws` package of bench/package.json,
no permessage-deflate): each opens a websocket to /api/sync and sends Connect, then, when told,
one ModifyQuerySet adding its queries, and then idles (ws answers pings by itself).

* clients N (--clients, default 1000,5000,10000): N clients connected and Connect sent (RSS1), then
  each subscribed to the same query (one shared query; RSS2, once all got its first result).
  Per idle client: (RSS1 - RSS0) / N; per client with one shared subscription: (RSS2 - RSS0) / N.
* subscriptions S (--subs, default 10000,50000,100000) over --sub-clients (100) clients: the
  clients connect (RSS1), then each adds S / 100 distinct queries, every one of the S queries
  distinct (RSS2, once every client got all its first results). Per subscription:
  (RSS2 - RSS1) / S (the live query, its read set, its result, the query cache's entry, the
  client's protocol state for it).

`--tree NAME=PATH` (repeatable; default this checkout, named "this") names the source trees to
compare in one invocation, e.g. `--tree before=/path/to/main --tree after=.`: every case runs
once per tree, trees interleaved, each server importing `server` from its tree (PYTHONPATH; the
launcher prints where it imported it from, checked). Ratios are after/before for the first two
trees. --runs repeats the whole set (median reported).

With --breakdown, afterwards each tree runs the smallest clients case and the smallest subs case
once more under tracemalloc (RIPPLE_DEBUG_TRACEMALLOC=1 read by bench/memory_launcher.py, the
bench's own launcher: nothing under server/ changes) and the growth between the snapshots at
RSS0/RSS1/RSS2 is printed by file:line, in bytes per client or per subscription (top --top, 15).
tracemalloc sees Python allocations only (not the C buffers of uvloop transports, OpenSSL or
the kernel's socket buffers, which are not in RSS anyway).

Machine: everything on this machine (loopback): PostgreSQL, the server, the Node clients. The
load average before each case is recorded; RSS does not depend on CPU contention much, but a
busy machine slows the subscribe phase. Results go to bench/results/memory-<UTC>.json.

    python bench/memory.py [--quick] [--tree before=/path --tree after=.] [--breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_DB,
    HOST,
    ROOT,
    NodeClients,
    Processes,
    command_output,
    describe_machine,
    free_port,
    http_call,
    run_cancellable,
    tail,
    wait_ready,
)

BENCH = Path(__file__).resolve().parent
APP_DIR = BENCH / "fanout_app"
CLIENTS_JS = BENCH / "memory_clients.mjs"
LAUNCHER = BENCH / "memory_launcher.py"
RESULTS = BENCH / "results"
PREFIX = "m"


@dataclass
class Tree:
    name: str
    path: Path
    info: dict[str, Any] = field(default_factory=dict)


def parse_tree(text: str) -> Tree:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError("expected NAME=PATH")
    return Tree(name, Path(path).resolve())


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------------------------------------
# The server and the clients
# ---------------------------------------------------------------------------------------------

class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, snapshots: Path | None) -> None:
        self.proc, self.port, self.snapshots, self.taken = proc, port, snapshots, 0

    async def snapshot(self) -> Path:
        """Ask the launcher for a tracemalloc snapshot; its file once written."""
        assert self.snapshots is not None
        self.taken += 1
        path = self.snapshots / f"snapshot-{self.taken}.tracemalloc"
        self.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while not await asyncio.to_thread(Path(f"{path}.done").exists):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"no tracemalloc snapshot {path}:\n{tail(self.proc.log_path)}")  # type: ignore[attr-defined]
            await asyncio.sleep(0.2)
        return path


async def start_server(tree: Tree, processes: Processes, args: argparse.Namespace, schema: str,
                       tracing: bool) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_") and k != "DATABASE_URL"}
    env.update(PYTHONPATH=str(tree.path), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    snapshots = None
    if tracing:
        snapshots = Path(tempfile.mkdtemp(prefix="memory-snapshots-"))
        env.update(RIPPLE_DEBUG_TRACEMALLOC="1", RIPPLE_DEBUG_TRACEMALLOC_DIR=str(snapshots))
    proc = processes.start(f"{tree.name}-server", [sys.executable, str(LAUNCHER), "serve", "--port", str(port),
                                                  "--dir", str(APP_DIR), "--database-url", args.database_url,
                                                  "--db-schema", schema], env=env, cwd=tree.path)
    await wait_ready(proc, port)
    status, body = await asyncio.to_thread(http_call, port, "POST", "/api/query",
                                           {"path": "counters:get", "args": {"name": PREFIX + "warm"}, "format": "json"})
    if status != 200 or not body.startswith(b'{"status":"success"'):
        raise RuntimeError(f"warm-up query failed: {status} {body[:300]!r}")
    served_from = ""
    for line in proc.log_path.read_text(errors="replace").splitlines():  # type: ignore[attr-defined]
        if line.startswith("memory_launcher: server from "):
            served_from = line.split(" from ", 1)[1].strip()
    if served_from != str(tree.path / "server" / "__init__.py"):  # (tree.path is resolved)
        raise RuntimeError(f"tree {tree.name}: the server imported server from {served_from!r}, not {tree.path}")
    return Server(proc, port, snapshots)


class Clients(NodeClients):
    """One Node process of bench/memory_clients.mjs: a message reporting client errors fails
    the case."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(CLIENTS_JS, config, log_prefix="memory-node-")

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        message = await super().expect(event, timeout)
        if message.get("errors"):
            raise RuntimeError(f"Node clients: {message['errors']} errors, first: {message.get('first_error')}")
        return message


def client_config(server: Server, clients: int, subs_per_client: int, distinct: int) -> dict[str, Any]:
    return {"wsUrl": f"ws://{HOST}:{server.port}/api/sync", "clients": clients, "subsPerClient": subs_per_client,
            "distinct": distinct, "udfPath": "counters:get", "prefix": PREFIX, "connectConcurrency": 64,
            "readyTimeoutMs": 600_000}


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------

async def run_case(case: dict[str, Any], tree: Tree, processes: Processes, args: argparse.Namespace, schema: str,
                   tracing: bool = False) -> dict[str, Any]:
    """Three RSS readings (and tracemalloc snapshots when `tracing`): baseline, clients connected,
    clients subscribed."""
    clients, per_client, distinct = case["clients"], case["subs_per_client"], case["distinct"]
    load = os.getloadavg()[0]
    server = await start_server(tree, processes, args, schema, tracing)
    nodes: list[Clients] = []
    try:
        warm = Clients(client_config(server, 10, 1, 1))
        nodes.append(warm)
        await warm.start()
        await warm.expect("connected", 60)
        warm.send("subscribe")
        await warm.expect("subscribed", 60)
        await warm.close()
        nodes.remove(warm)
        readings, snaps, timings = [], [], {}
        await asyncio.sleep(args.settle)
        readings.append(rss_kb(server.proc.pid))
        if tracing:
            snaps.append(await server.snapshot())
        node = Clients(client_config(server, clients, per_client, distinct))
        nodes.append(node)
        await node.start()
        timings["connect_s"] = (await node.expect("connected", 600))["ready_ms"] / 1000
        await asyncio.sleep(args.settle)
        readings.append(rss_kb(server.proc.pid))
        if tracing:
            snaps.append(await server.snapshot())
        node.send("subscribe")
        timings["subscribe_s"] = (await node.expect("subscribed", 900))["subscribe_ms"] / 1000
        await asyncio.sleep(args.settle)
        readings.append(rss_kb(server.proc.pid))
        if tracing:
            snaps.append(await server.snapshot())
        rss0, rss1, rss2 = readings
        subs = clients * per_client
        result = {"tree": tree.name, **case, "subs": subs, "rss_kb": readings, "load_1min": load,
                  **{k: round(v, 2) for k, v in timings.items()}}
        if case["kind"] == "clients":
            result["idle_client_kb"] = (rss1 - rss0) / clients
            result["client_with_shared_sub_kb"] = (rss2 - rss0) / clients
        else:
            result["per_sub_kb"] = (rss2 - rss1) / subs
        if tracing:
            unit = clients if case["kind"] == "clients" else subs
            result["tracemalloc"] = {
                "connected": top_growth(snaps[0], snaps[1], clients, args.top),
                "subscribed": top_growth(snaps[1 if case["kind"] == "subs" else 0], snaps[2], unit, args.top),
            }
        return result
    finally:
        for node in nodes:
            await node.close()
        Processes.stop(server.proc, keep_log=args.keep_server_logs)
        if args.keep_server_logs:
            print(f"    server log: {server.proc.log_path}", flush=True)  # type: ignore[attr-defined]
        processes.procs.remove(server.proc)


def top_growth(before: Path, after: Path, per: int, top: int) -> dict[str, Any]:
    """What grew between two tracemalloc snapshots, by file:line, in bytes per `per`."""
    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    stats = new.compare_to(old, "lineno")
    total = sum(s.size_diff for s in stats)
    lines = []
    for s in stats[:top]:
        frame = s.traceback[0]
        parts = Path(frame.filename).parts
        where = "/".join(parts[-3:]) if "site-packages" not in parts else "/".join(parts[parts.index("site-packages") + 1:])
        lines.append({"where": f"{where}:{frame.lineno}", "bytes_per": round(s.size_diff / per, 1),
                      "blocks_per": round(s.count_diff / per, 2)})
    return {"traced_bytes_per": round(total / per, 1), "per": per, "top": lines}


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = [{"kind": "clients", "key": f"clients{n}", "clients": n, "subs_per_client": 1, "distinct": 1}
             for n in args.clients]
    for s in args.subs:
        if s % args.sub_clients:
            raise SystemExit(f"--subs {s} must be a multiple of --sub-clients ({args.sub_clients})")
        cases.append({"kind": "subs", "key": f"subs{s}", "clients": args.sub_clients,
                      "subs_per_client": s // args.sub_clients, "distinct": s})
    return cases


def check_tree(tree: Tree) -> None:
    if not (tree.path / "server" / "__init__.py").is_file():
        raise SystemExit(f"--tree {tree.name}={tree.path}: no server/__init__.py there")
    tree.info = {"path": str(tree.path), "git_commit": command_output(["git", "rev-parse", "HEAD"], cwd=tree.path),
                 "git_dirty_server": bool(command_output(["git", "status", "--porcelain", "--", "server"], cwd=tree.path))}


def show(result: dict[str, Any]) -> str:
    rss = "/".join(f"{r / 1024:.0f}" for r in result["rss_kb"])
    if result["kind"] == "clients":
        return (f"idle {result['idle_client_kb']:.2f} KB/client, with one shared sub "
                f"{result['client_with_shared_sub_kb']:.2f} KB/client (RSS {rss} MB; connect {result['connect_s']} s, "
                f"load {result['load_1min']:.1f})")
    return (f"{result['per_sub_kb']:.2f} KB/subscription (RSS {rss} MB; subscribe {result['subscribe_s']} s, "
            f"load {result['load_1min']:.1f})")


def print_breakdown(tree: str, key: str, phase: str, growth: dict[str, Any]) -> None:
    unit = "client" if phase == "connected" or key.startswith("clients") else "subscription"
    print(f"\n  {tree} {key} {phase}: traced Python memory {growth['traced_bytes_per']:.0f} B per {unit} "
          f"({growth['per']:,}); top lines:")
    for line in growth["top"]:
        print(f"    {line['bytes_per']:>8.0f} B {line['blocks_per']:>6.2f} blocks  {line['where']}")


async def bench(args: argparse.Namespace) -> None:
    import asyncpg

    for tree in args.trees:
        check_tree(tree)
    cases = plan(args)
    admin = await asyncpg.connect(args.database_url)
    processes = Processes("memory")
    schemas: list[str] = []
    try:
        pg_version = await admin.fetchval("SELECT version()")
        info = describe_machine(pg_version, ["uvicorn", "websockets", "starlette", "uvloop", "asyncpg"],
                                [BENCH / "memory.py", CLIENTS_JS, LAUNCHER, *sorted((ROOT / "server").rglob("*.py"))], ["--", "server", "bench"])
        info["node"] = command_output(["node", "--version"])
        info["fd_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(f"{info['nproc']} CPUs; Python {info['python']}; Node {info['node']}; fd limit {info['fd_limit'][0]}; "
              f"trees {', '.join(t.name + '=' + str(t.path) + ' (' + t.info['git_commit'][:10] + ')' for t in args.trees)}", flush=True)
        results: list[dict[str, Any]] = []
        started = time.monotonic()
        for run in range(1, args.runs + 1):
            for case in cases:
                for tree in args.trees:
                    schema = f"bench_memory_{secrets.token_hex(4)}"
                    schemas.append(schema)
                    result = await run_case(case, tree, processes, args, schema)
                    result["run"] = run
                    results.append(result)
                    print(f"  run {run} {case['key']:>11} {tree.name:>8}: {show(result)}", flush=True)
        breakdown: list[dict[str, Any]] = []
        if args.breakdown:
            for case in (next(c for c in cases if c["kind"] == kind) for kind in ("clients", "subs")
                         if any(c["kind"] == kind for c in cases)):
                for tree in args.trees:
                    schema = f"bench_memory_{secrets.token_hex(4)}"
                    schemas.append(schema)
                    result = await run_case(case, tree, processes, args, schema, tracing=True)
                    breakdown.append(result)
                    for phase, growth in result["tracemalloc"].items():
                        print_breakdown(tree.name, case["key"], phase, growth)
        summary = summarize(results, cases, args.trees)
        out = {
            "benchmark": "memory", "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": info, "trees": {t.name: t.info for t in args.trees},
            "config": {k: (v if not isinstance(v, list) or k != "trees" else None) for k, v in vars(args).items()
                       if k != "trees"},
            "elapsed_s": round(time.monotonic() - started, 1), "summary": summary, "results": results,
            "breakdown": breakdown,
        }
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"memory-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"\nresults: {path.relative_to(ROOT)}")
    finally:
        processes.stop_all()
        for schema in schemas:
            with contextlib.suppress(Exception):
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def summarize(results: list[dict[str, Any]], cases: list[dict[str, Any]], trees: list[Tree]) -> dict[str, Any]:
    """Median over runs per (case, tree), with the ratio of the second tree to the first."""
    print("\nmedians (KB of server RSS)" + (f"; ratio {trees[1].name}/{trees[0].name}" if len(trees) > 1 else ""))
    summary: dict[str, Any] = {}
    for case in cases:
        metrics = ("idle_client_kb", "client_with_shared_sub_kb") if case["kind"] == "clients" else ("per_sub_kb",)
        for metric in metrics:
            row = {t.name: statistics.median(r[metric] for r in results if r["key"] == case["key"] and r["tree"] == t.name)
                   for t in trees}
            if len(trees) > 1 and row[trees[0].name]:
                row["ratio"] = row[trees[1].name] / row[trees[0].name]
            summary[f"{case['key']}.{metric}"] = row
            cells = "  ".join(f"{name} {value:.2f}" for name, value in row.items())
            print(f"  {case['key']:>11} {metric:<26} {cells}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 clients and 10,000 subscriptions, 1 run")
    parser.add_argument("--runs", type=int, default=1, help="repetitions of the whole set of cases (default 1)")
    parser.add_argument("--clients", default=None, help="idle client counts, comma-separated (default 1000,5000,10000)")
    parser.add_argument("--subs", default=None, help="distinct subscription counts, comma-separated "
                                                     "(default 10000,50000,100000)")
    parser.add_argument("--sub-clients", type=int, default=100, help="clients holding the subscriptions (default 100)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each RSS reading (default 2)")
    parser.add_argument("--breakdown", action="store_true", help="afterwards, tracemalloc the smallest cases")
    parser.add_argument("--top", type=int, default=15, help="lines shown per tracemalloc comparison (default 15)")
    parser.add_argument("--tree", dest="trees", action="append", type=parse_tree, metavar="NAME=PATH",
                        help="a source tree to measure (repeatable; default this checkout)")
    parser.add_argument("--keep-server-logs", action="store_true", help="keep each server's log file and print its path")
    parser.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL URL (default {DEFAULT_DB})")
    args = parser.parse_args()
    args.clients = [int(x) for x in (args.clients or ("1000" if args.quick else "1000,5000,10000")).split(",") if x]
    args.subs = [int(x) for x in (args.subs or ("10000" if args.quick else "10000,50000,100000")).split(",") if x]
    args.trees = args.trees or [Tree("this", ROOT)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.clients, default=0) + 1024  # per process: the server and the Node clients each hold one fd a socket
    if soft < need:  # children inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
        if hard < need:
            print(f"warning: fd limit {hard} is below the {need} this run needs", file=sys.stderr)
    run_cancellable(lambda: bench(args), "interrupted; processes stopped and schemas dropped")


if __name__ == "__main__":
    main()
