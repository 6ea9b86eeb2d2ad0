"""Fan-out throughput of `ripple serve --workers N`: N = 1 against N = 2 (or --workers) on one load.

What is measured
----------------
Clients run in a separate process: bench/workers_clients.mjs (Node, the `ws` package pinned in
bench/package.json). It opens --clients (2,000) websockets speaking the Convex sync protocol;
client c subscribes to `counters:get(name = "w" + c % Q)`, Q = --queries (20), so each query has
clients/Q subscribers, spread over the workers by the kernel (one shared listening socket,
docs/operations.md#workers). Then Q writers, one per query, all at once, each closed loop with no
pause: `counters:put(name, value)` through `POST /api/mutation` (its own keep-alive connection),
wait until every subscriber of that query received the value, write again. The write phase
lasts --seconds (20) after --warmup (3) seconds.

Figures per case:

* deliveries/s   updates received by the clients inside the window (one subscriber receiving a
                 written value): the fan-out throughput. The issue's target: with 2 workers
                 >= 1.6x one worker on the same load.
* writes/s       writes whose every subscriber received the value, started inside the window.
* write complete t(last subscriber of that query received) - t(write sent), p50/p99.
* CPU            % of one core over the write phase: Ripple (the supervisor and its workers
                 together), the Node load generator, PostgreSQL (whole cluster, all its
                 processes), and the machine's busy % (all cores): the load generator and
                 PostgreSQL share the machine's two cores with the workers, which bounds what
                 a second worker can add.

Each case starts a fresh `python -m server.cli serve --workers N` (its defaults otherwise) on
bench/fanout_app in a fresh PostgreSQL schema; cases alternate (1, 2, 1, 2, ...) over --runs (3)
runs and the median per N is reported with the ratio. Results go to
bench/results/workers-<UTC timestamp>.json with the git commit and machine information.

    python bench/workers.py                        # 3 runs of N=1 and N=2, ~4 min
    python bench/workers.py --clients 1000 --queries 10 --seconds 10 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
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
    machine_busy_ticks,
    process_ticks,
    run_cancellable,
    tail,
    wait_ready,
)

SCRIPT = Path(__file__).resolve()
BENCH = SCRIPT.parent
APP_DIR = BENCH / "fanout_app"
CLIENTS_JS = BENCH / "workers_clients.mjs"
RESULTS_DIR = BENCH / "results"
PREFIX = "w"


def postgres_pids() -> set[int]:
    return {pid for pid, (name, _) in process_ticks().items() if name.startswith("postgres")}


async def run_case(workers: int, args: argparse.Namespace, schema: str, processes: Processes, value_base: int) -> dict[str, Any]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")} | {"PYTHONUNBUFFERED": "1"}
    proc = processes.start(f"ripple{workers}", [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
                                                 "--workers", str(workers), "--dir", str(APP_DIR),
                                                 "--database-url", args.database_url, "--db-schema", schema], env=env)
    node = None
    stderr = tempfile.NamedTemporaryFile(prefix="workers-node-", suffix=".log", delete=False)
    try:
        await wait_ready(proc, port)
        for q in range(args.queries):  # load the code paths in whichever worker answers
            status, body = await asyncio.to_thread(http_call, port, "POST", "/api/query",
                                                   {"path": "counters:get", "args": {"name": f"{PREFIX}{q}"}, "format": "json"})
            if status != 200:
                raise RuntimeError(f"warm-up query failed: {status} {body[:300]!r}")
        config = {"wsUrl": f"ws://{HOST}:{port}/api/sync", "writeUrl": f"http://{HOST}:{port}/api/mutation",
                  "udfPath": "counters:get", "writePath": "counters:put", "prefix": PREFIX, "clients": args.clients,
                  "queries": args.queries, "seconds": args.seconds, "warmupSeconds": args.warmup,
                  "valueBase": value_base}
        node = await asyncio.create_subprocess_exec("node", str(CLIENTS_JS), json.dumps(config), stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=BENCH,
                                                    start_new_session=True, limit=1 << 24)

        async def expect(event: str, timeout: float) -> dict[str, Any]:
            assert node is not None and node.stdout is not None
            line = await asyncio.wait_for(node.stdout.readline(), timeout)
            if not line:
                raise RuntimeError(f"Node clients exited before '{event}':\n{tail(Path(stderr.name))}")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") != event:
                raise RuntimeError(f"Node clients: expected {event}, got {message}")
            return message

        ready = await expect("ready", 600)
        await asyncio.sleep(1.0)
        pids = group_pids(proc.pid)
        pg = postgres_pids()
        t0, ticks0, busy0 = time.perf_counter(), process_ticks(), machine_busy_ticks()
        assert node.stdin is not None
        node.stdin.write(b"go\n")
        done = await expect("done", args.seconds + args.warmup + 120)
        t1, ticks1, busy1 = time.perf_counter(), process_ticks(), machine_busy_ticks()
        wall = t1 - t0

        def pct(group: set[int]) -> float:
            used = sum(ticks1[p][1] - ticks0.get(p, ("", 0))[1] for p in group if p in ticks1)
            return round(100.0 * used / CLK_TCK / wall, 1)

        errors = done.pop("errors")
        if done["failed_writes"] or done["timed_out_writes"] or errors["versionViolations"] or errors["unexpectedCloses"]:
            print(f"  !! errors: {done['failed_writes']} failed, {done['timed_out_writes']} timed out, {errors}", flush=True)
        return {
            "workers": workers, "ready_s": round(ready["ready_ms"] / 1000, 2), **{k: v for k, v in done.items() if k != "event"},
            "errors": errors, "ripple_cpu_pct": pct(pids), "node_cpu_pct_proc": pct({node.pid}), "postgres_cpu_pct": pct(pg),
            "machine_busy_pct": round(100.0 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1),
            "worker_pids": len(pids) - 1 if workers > 1 else 1,
        }
    finally:
        if node is not None and node.returncode is None:
            with contextlib.suppress(Exception):
                assert node.stdin is not None
                node.stdin.write(b"close\n")
                await asyncio.wait_for(node.wait(), 20)
            if node.returncode is None:
                node.kill()
                await node.wait()
        with contextlib.suppress(OSError):
            os.unlink(stderr.name)
        Processes.stop(proc)
        processes.procs.remove(proc)


async def bench(args: argparse.Namespace) -> None:
    import asyncpg

    if not (BENCH / "node_modules" / "ws").exists():
        command_output(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it: clients and workers
    schema = f"workers_{secrets.token_hex(4)}"
    processes = Processes("workers")
    admin = await asyncpg.connect(args.database_url)
    counts = sorted({1, *args.workers})
    try:
        pg_version = await admin.fetchval("SELECT version()")
        info = {**describe_machine(pg_version, ("uvicorn", "starlette", "websockets", "asyncpg", "uvloop"),
                                   [*ROOT.joinpath("server").rglob("*.py"), *APP_DIR.rglob("*.py"), CLIENTS_JS, BENCH / "stats.mjs", SCRIPT],
                                   git_status_args=("--untracked-files=no", "--", "server", "bench")),
                "node": command_output(["node", "--version"]), "fd_limit": hard}
        print(f"commit {info['git_commit'][:12]}; {info['nproc']} CPUs ({info['cpu_model']}); {pg_version.split(' on ')[0]}; "
              f"{args.clients} clients on {args.queries} queries, {args.queries} closed-loop writers, {args.seconds:g} s per case",
              flush=True)
        seed_port = free_port()  # seed the counters through Ripple itself
        seeder = processes.start("seed", [sys.executable, "-m", "server.cli", "serve", "--port", str(seed_port), "--dir",
                                          str(APP_DIR), "--database-url", args.database_url, "--db-schema", schema])
        await wait_ready(seeder, seed_port)
        status, body = await asyncio.to_thread(http_call, seed_port, "POST", "/api/mutation", {
            "path": "counters:seed", "args": {"prefix": PREFIX, "start": 0, "count": args.queries}, "format": "json"})
        if status != 200 or not body.startswith(b'{"status":"success"'):
            raise RuntimeError(f"seeding failed: {status} {body[:300]!r}")
        Processes.stop(seeder)
        processes.procs.remove(seeder)

        results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        value_base = 0
        for run in range(1, args.runs + 1):
            for n in counts:
                value_base += 1 << 40
                r = await run_case(n, args, schema, processes, value_base)
                r["run"] = run
                results[n].append(r)
                w = r["write_complete_ms"]
                print(f"  run {run} workers {n}: {r['deliveries_per_s']:,.0f} deliveries/s, {r['writes_per_s']:,.0f} writes/s, "
                      f"write complete p50 {w['p50']:.1f} p99 {w['p99']:.1f} ms; CPU % of a core: ripple {r['ripple_cpu_pct']:.0f}, "
                      f"node {r['node_cpu_pct_proc']:.0f}, postgres {r['postgres_cpu_pct']:.0f}; machine busy "
                      f"{r['machine_busy_pct']:.0f}%", flush=True)

        median = {n: {"deliveries_per_s": statistics.median(r["deliveries_per_s"] for r in rs),
                      "writes_per_s": statistics.median(r["writes_per_s"] for r in rs),
                      "write_complete_p50_ms": statistics.median(r["write_complete_ms"]["p50"] for r in rs),
                      "write_complete_p99_ms": statistics.median(r["write_complete_ms"]["p99"] for r in rs),
                      "ripple_cpu_pct": statistics.median(r["ripple_cpu_pct"] for r in rs)} for n, rs in results.items()}
        print("\nmedian over runs:")
        one = median[1]["deliveries_per_s"]
        ratios = {}
        for n, m in median.items():
            ratios[n] = m["deliveries_per_s"] / one if one else float("nan")
            target = "  (target >= 1.6x)" if n == 2 else ""
            print(f"  workers {n}: {m['deliveries_per_s']:,.0f} deliveries/s ({ratios[n]:.2f}x one worker){target}; "
                  f"write complete p50 {m['write_complete_p50_ms']:.1f} p99 {m['write_complete_p99_ms']:.1f} ms; "
                  f"ripple CPU {m['ripple_cpu_pct']:.0f}% of a core")
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"workers-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.write_text(json.dumps({"machine": info, "config": vars(args), "median": median, "ratio_to_one_worker": ratios,
                                   "runs": results}, indent=2, default=str) + "\n")
        print(f"\nwrote {out.relative_to(ROOT)}")
    finally:
        processes.stop_all()
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[2],
                        help="worker counts compared with 1, comma-separated (default 2)")
    parser.add_argument("--clients", type=int, default=2000, help="websocket clients (default 2000)")
    parser.add_argument("--queries", type=int, default=20, help="distinct queries = concurrent writers (default 20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured write phase per case (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted writes before the window, seconds (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the pair of cases (default 3)")
    parser.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL URL (default {DEFAULT_DB})")
    args = parser.parse_args()
    run_cancellable(lambda: bench(args), "interrupted: servers stopped, schema dropped")


if __name__ == "__main__":
    main()
