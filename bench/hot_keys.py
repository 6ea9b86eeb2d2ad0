"""Hot keys: many clients incrementing a few counters, Ripple against raw asyncpg, in one run.

What is measured
----------------
`--clients` (100) closed-loop HTTP clients in one Node process (bench/hot_keys_clients.mjs:
node:http keep-alive agent, one socket per client) each POST an increment of a counter picked at
random among `--counters` (10), sending the next as soon as the answer arrived, for `--warmup` s
and then a `--duration` s window. Mutations/s is the number of successful increments completed
in the window over its length; p50/p99/max latency are over those requests (nearest rank).

Cases (each on a server of its own, started for the case and stopped after it; all share one
fresh PostgreSQL schema):

* ripple        -- `python -m server.cli serve` (this tree, default settings: pool_max 20) of
                   bench/hot_keys_app/, `POST /api/mutation` `counters:increment(name)`: read the
                   counter by the `by_name` index, patch count + 1 (one SERIALIZABLE transaction,
                   retried on conflicts by Ripple's policy, with the hot-key queue).
                   The increments queued on one counter commit together (group commit,
                   server/core/group_commit.py): one transaction, a savepoint each.
* ripple-nogroup -- the same server with RIPPLE_GROUP_COMMIT=0: the hot-key queue alone, one
                   transaction per increment (the "before" of group commit).
* ripple-noqueue -- the same server with RIPPLE_HOT_KEY_QUEUE=0: blind retry with full-jitter
                   backoff (the "before" of the hot-key queue).
* asyncpg       -- the baseline: a uvicorn + Starlette server on the same stack as Ripple (uvloop,
                   httptools, one process), an asyncpg pool of the same size as Ripple's (20),
                   `POST /increment` with the same body: BEGIN ISOLATION LEVEL SERIALIZABLE;
                   SELECT id, count FROM hot_counters WHERE name = $1 (a btree index on name);
                   UPDATE hot_counters SET count = $2 WHERE id = $1; COMMIT; on a serialization
                   failure or deadlock, roll back and run it again after a delay from Ripple's own
                   policy (server/core/backoff.py conflict_retry_delays: full jitter, 4 ms doubling
                   to 250 ms), at most 40 attempts, a connection taken from the pool per attempt.
                   A plain table (no change log, no NOTIFY): what a developer would write by hand.
                   Its connections set enable_seqscan = off, so that the SELECT reads through the
                   index whatever the table's size, as Ripple's does: on a 10-row table the planner
                   picks a sequential scan, whose serializable predicate lock covers the whole
                   table, and nearly every increment then conflicts with every other (measured:
                   3-4 retries per increment and less than half the throughput).
* asyncpg-naive -- the same server retrying at once, without backoff.
* ripple-2w     -- `ripple serve --workers 2`: two Ripple processes on one socket, each with its own
                   queues (conflicts between them are retried). Its retries and queued figures are
                   what the worker that answered GET /_ripple/metrics counted (about half), and its
                   server CPU is the supervisor's only (the workers are its children): not comparable.
* floor         -- calibration: the baseline server answering a fixed success without touching
                   the database: what the Node generator and the HTTP stack can do at best.

With `--uncontended`, three more cases run the same workload over 10,000 counters (almost no two
clients write one counter at once): `ripple`, `ripple-nogroup` and `ripple-noqueue`, to show the
queue and group commit cost uncontended mutations nothing.

For every case the script reads the retries (Ripple: `ripple_mutation_retries_total`,
`ripple_mutation_queued_total`, `ripple_mutation_grouped_total` and
`ripple_mutation_group_commits_total` from GET /_ripple/metrics; the baseline counts its own) and checks
that each counter's count grew by exactly the number of successful increments the clients saw
for it (nothing lost, nothing doubled). CPU: the machine's busy share over the window, and the
server's and generator's CPU in % of one core (the machine is shared: other helpers' processes
are in the machine figure). The cases are interleaved over `--runs` runs; medians are printed
with the ratio Ripple / asyncpg mutations/s, and everything goes to
bench/results/hot_keys-<UTC>.json with the git commit and machine information.

    python bench/hot_keys.py [--duration 10] [--warmup 3] [--runs 3] [--clients 100] [--counters 10]
                             [--uncontended] [--only ripple,asyncpg]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
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
    machine_busy_ticks,
    percentile,
    process_ticks,
    run_cancellable,
    wait_ready,
)

SCRIPT = Path(__file__).resolve()
APP_DIR = SCRIPT.parent / "hot_keys_app"
CLIENTS_JS = SCRIPT.parent / "hot_keys_clients.mjs"
RESULTS_DIR = SCRIPT.parent / "results"
HOT_PREFIX, COLD_PREFIX = "c", "u"
COLD_COUNTERS = 10_000
POOL = 20  # Ripple's default pool_max; the baseline's pool

# ---------------------------------------------------------------------------------------------
# The raw asyncpg baseline server (a subprocess: `hot_keys.py _baseline ...`)
# ---------------------------------------------------------------------------------------------

SELECT = "SELECT id, count FROM hot_counters WHERE name = $1"
UPDATE = "UPDATE hot_counters SET count = $2 WHERE id = $1"


def baseline_main(port: int, database_url: str, schema: str, policy: str) -> None:
    import asyncpg
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    sys.path.insert(0, str(ROOT))
    from server.core.backoff import conflict_retry_delays

    state: dict[str, Any] = {"retries": 0}
    conflicts = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)

    async def increment(name: str) -> int:
        delays = conflict_retry_delays()
        for attempt in range(1, 41):
            try:
                async with state["pool"].acquire() as conn, conn.transaction(isolation="serializable"):
                    row = await conn.fetchrow(SELECT, name)
                    await conn.execute(UPDATE, row["id"], row["count"] + 1)
                    return int(row["count"]) + 1
            except conflicts:
                if attempt == 40:
                    raise
                state["retries"] += 1
                if policy == "backoff":
                    await asyncio.sleep(next(delays))
        raise AssertionError("unreachable")

    async def endpoint(request: Request) -> Response:
        body = orjson.loads(await request.body())
        value = await increment(body["args"]["name"])
        return Response(orjson.dumps({"status": "success", "value": value}), media_type="application/json")

    async def floor(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(b'{"status":"success","value":1}', media_type="application/json")

    async def metrics(request: Request) -> Response:
        return Response(orjson.dumps({"retries": state["retries"]}), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # enable_seqscan off: the SELECT reads through the index on name, as Ripple's does, whatever
        # the table's size (on a 10-row table the planner scans it, and a serializable seq scan
        # locks the whole table for SSI: every increment then conflicts with every other).
        async with asyncpg.create_pool(database_url, min_size=POOL, max_size=POOL,
                                       server_settings={"search_path": schema, "enable_seqscan": "off"}) as pool:
            state["pool"] = pool
            yield

    app = Starlette(routes=[Route("/increment", endpoint, methods=["POST"]), Route("/floor", floor, methods=["POST"]),
                            Route("/metrics", metrics, methods=["GET"])], lifespan=lifespan)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False, loop="uvloop", http="httptools",
                lifespan="on")


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

CASES = {  # key: (label, server kind, counters' prefix)
    "ripple": ("ripple (queue + group commit)", "ripple", HOT_PREFIX),
    "ripple-nogroup": ("ripple, queue, no group commit", "ripple-nogroup", HOT_PREFIX),
    "ripple-noqueue": ("ripple, queue off (main)", "ripple-noqueue", HOT_PREFIX),
    "asyncpg": ("asyncpg HTTP, Ripple's backoff", "backoff", HOT_PREFIX),
    "asyncpg-naive": ("asyncpg HTTP, naive retry", "naive", HOT_PREFIX),
    "ripple-2w": ("ripple --workers 2 (queue per worker)", "ripple-2w", HOT_PREFIX),
    "floor": ("floor (no database)", "floor", HOT_PREFIX),
    "cold-ripple": ("10,000 counters: ripple", "ripple", COLD_PREFIX),
    "cold-ripple-noqueue": ("10,000 counters: ripple, queue off", "ripple-noqueue", COLD_PREFIX),
    "cold-ripple-nogroup": ("10,000 counters: ripple, no group", "ripple-nogroup", COLD_PREFIX),
}


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, namespace: str, admin: Any) -> None:
        self.args, self.namespace, self.admin = args, namespace, admin
        self.processes = Processes("hot_keys")

    async def start(self, kind: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        if kind.startswith("ripple"):
            env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}
            env.update(PYTHONUNBUFFERED="1", RIPPLE_HOT_KEY_QUEUE="0" if kind == "ripple-noqueue" else "1",
                       RIPPLE_GROUP_COMMIT="0" if kind == "ripple-nogroup" else "1")
            # One process unless measuring workers (newer trees default to one worker per core).
            workers = ["--workers", "2" if kind == "ripple-2w" else "1"]
            proc = self.processes.start(kind, [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
                                               "--dir", str(APP_DIR), "--database-url", self.args.database_url,
                                               "--db-schema", self.namespace, *workers], env=env, cwd=APP_DIR)
            await wait_ready(proc, port, "/_ripple/health")
        else:
            proc = self.processes.start(kind, [sys.executable, str(SCRIPT), "_baseline", "--port", str(port),
                                               "--database-url", self.args.database_url, "--schema", self.namespace,
                                               "--policy", "naive" if kind == "naive" else "backoff"])
            await wait_ready(proc, port, "/metrics")
        return proc, port

    async def counts(self, kind: str, prefix: str, port: int) -> dict[str, int]:
        if kind.startswith("ripple"):
            status, body = await asyncio.to_thread(http_call, port, "POST", "/api/query", {
                "path": "counters:totals", "args": {"prefix": prefix}, "format": "json"})
            assert status == 200, body
            return dict(json.loads(body)["value"])
        rows = await self.admin.fetch(f'SELECT name, count FROM "{self.namespace}".hot_counters WHERE name LIKE $1',
                                      prefix + "%")
        return {r["name"]: r["count"] for r in rows}

    async def retries(self, kind: str, port: int) -> dict[str, float]:
        if kind.startswith("ripple"):
            _, body = await asyncio.to_thread(http_call, port, "GET", "/_ripple/metrics")
            m = parse_metrics(body.decode())
            return {"retries": m.get("ripple_mutation_retries_total", 0.0),
                    "queued": m.get("ripple_mutation_queued_total", 0.0),
                    "queue_timeouts": m.get("ripple_mutation_queue_timeouts_total", 0.0),
                    "grouped": m.get("ripple_mutation_grouped_total", 0.0),
                    "group_commits": m.get("ripple_mutation_group_commits_total", 0.0)}
        _, body = await asyncio.to_thread(http_call, port, "GET", "/metrics")
        return {"retries": float(json.loads(body)["retries"])}

    async def measure(self, key: str) -> dict[str, Any]:
        label, kind, prefix = CASES[key]
        n = self.args.counters if prefix == HOT_PREFIX else COLD_COUNTERS
        server_kind = "backoff" if kind == "floor" else kind
        proc, port = await self.start(server_kind)
        try:
            before_counts = await self.counts(server_kind, prefix, port)
            before = await self.retries(server_kind, port)
            path = "/api/mutation" if kind.startswith("ripple") else ("/floor" if kind == "floor" else "/increment")
            argv = ["node", str(CLIENTS_JS), str(port), path, str(self.args.clients), prefix, str(n),
                    str(self.args.warmup), str(self.args.duration), "counters:increment"]
            gen = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
            await asyncio.sleep(self.args.warmup)
            ticks0, busy0 = process_ticks(), machine_busy_ticks()
            await asyncio.sleep(self.args.duration)
            ticks1, busy1 = process_ticks(), machine_busy_ticks()
            out, _ = await gen.communicate()
            result = json.loads(out)
            after = await self.retries(server_kind, port)
            after_counts = await self.counts(server_kind, prefix, port)
        finally:
            Processes.stop(proc)
        lat = sorted(result.pop("latencies_ms"))
        successes = result.pop("successes")
        window_s = self.args.duration

        def cpu(pid: int | None) -> float:
            if pid is None or pid not in ticks0 or pid not in ticks1:
                return float("nan")
            return 100.0 * (ticks1[pid][1] - ticks0[pid][1]) / CLK_TCK / window_s

        wrong = {} if kind == "floor" else {
            name: {"grew": after_counts.get(name, 0) - before_counts.get(name, 0), "successes": count}
            for name, count in successes.items() if after_counts.get(name, 0) - before_counts.get(name, 0) != count}
        total = sum(successes.values())
        out_row = {
            "case": key, "label": label, "mutations_per_s": len(lat) / window_s,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": lat[-1] if lat else float("nan"),
            "completed_in_window": len(lat), "successes_total": total, "errors": result["errors"],
            "error_samples": result["error_samples"],
            **{k: after[k] - before.get(k, 0.0) for k in after},
            "retries_per_mutation": (after["retries"] - before["retries"]) / total if total else float("nan"),
            "counts_checked": kind != "floor", "counts_wrong": wrong,
            "server_cpu_pct": cpu(proc.pid), "generator_cpu_pct": cpu(gen.pid),
            "machine_busy_pct": 100.0 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
            "loadavg": os.getloadavg()[0],
        }
        if wrong:
            print(f"  !! counts do not match the successful increments: {wrong}", flush=True)
        return out_row


async def seed(bench: Bench, args: argparse.Namespace) -> None:
    proc, port = await bench.start("ripple")
    try:
        for prefix, n in ((HOT_PREFIX, args.counters), (COLD_PREFIX, COLD_COUNTERS if args.uncontended else 0)):
            for start in range(0, n, 1000):
                status, body = await asyncio.to_thread(http_call, port, "POST", "/api/mutation", {
                    "path": "counters:seed", "args": {"prefix": prefix, "start": start, "count": min(1000, n - start)},
                    "format": "json"})
                if status != 200:
                    raise RuntimeError(f"seeding failed: {status} {body[:300]!r}")
    finally:
        Processes.stop(proc)
    ns = bench.namespace
    await bench.admin.execute(f'CREATE TABLE "{ns}".hot_counters (id bigserial PRIMARY KEY, name text NOT NULL, count bigint NOT NULL)')
    await bench.admin.execute(f'CREATE INDEX ON "{ns}".hot_counters (name)')
    await bench.admin.execute(f"""INSERT INTO "{ns}".hot_counters (name, count)
        SELECT '{HOT_PREFIX}' || i, 0 FROM generate_series(0, {args.counters - 1}) i""")
    if args.uncontended:
        await bench.admin.execute(f"""INSERT INTO "{ns}".hot_counters (name, count)
            SELECT '{COLD_PREFIX}' || i, 0 FROM generate_series(0, {COLD_COUNTERS - 1}) i""")
    await bench.admin.execute(f'ANALYZE "{ns}".hot_counters')


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {k: statistics.median(r[k] for r in rows) for k in numeric}
    out.update(label=rows[0]["label"], runs=len(rows), errors=sum(r["errors"] for r in rows),
               counts_ok=all(not r["counts_wrong"] for r in rows if r["counts_checked"]))
    return out


def print_row(key: str, r: dict[str, Any]) -> None:
    queued = f"{r['queued']:>7.0f}" if "queued" in r else f"{'':>7}"
    print(f"  {r['label']:<36} {r['mutations_per_s']:>8.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['max_ms']:>7.0f} "
          f"{r.get('retries_per_mutation', float('nan')):>9.3f} {queued} {r['errors']:>5}  "
          f"{r['server_cpu_pct']:>5.0f} {r['generator_cpu_pct']:>5.0f} {r['machine_busy_pct']:>5.0f}", flush=True)


async def bench_main(args: argparse.Namespace) -> None:
    import asyncpg

    namespace = "bench_" + secrets.token_hex(4)
    admin = await asyncpg.connect(args.database_url)
    bench = Bench(args, namespace, admin)
    keys = [k for k in CASES if (not args.only or k in args.only) and (args.uncontended or not k.startswith("cold"))]
    try:
        pg_version = await admin.fetchval("SELECT version()")
        info = describe_machine(pg_version, ["asyncpg", "uvicorn", "starlette", "uvloop"],
                                [*ROOT.joinpath("server").rglob("*.py"), *APP_DIR.rglob("*.py"), SCRIPT, CLIENTS_JS])
        print(f"commit {info['git_commit'][:12]}{' (dirty)' if info['git_dirty'] else ''}; {info['nproc']} CPUs; "
              f"{pg_version.split(' on ')[0]}; schema {namespace}; {args.clients} clients, {args.counters} counters; "
              f"warm-up {args.warmup} s, window {args.duration} s, {args.runs} run(s); load {os.getloadavg()}", flush=True)
        await seed(bench, args)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
        header = (f"  {'case':<36} {'mut/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'retry/mut':>9} {'queued':>7} "
                  f"{'errs':>5}  {'srvCPU':>5} {'genCPU':>5} {'mach%':>5}")
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}\n{header}", flush=True)
            for key in keys:
                row = await bench.measure(key)
                runs[key].append(row)
                print_row(key, row)
        medians = {k: median_row(v) for k, v in runs.items()}
        print(f"median of {args.runs} run(s)\n{header}")
        for key, row in medians.items():
            print_row(key, row)
        ratios = {}
        for mine, base in (("ripple", "asyncpg"), ("ripple-nogroup", "asyncpg"), ("ripple-noqueue", "asyncpg"),
                           ("ripple", "ripple-nogroup"), ("ripple", "ripple-noqueue"), ("ripple", "asyncpg-naive"),
                           ("cold-ripple", "cold-ripple-nogroup"), ("cold-ripple", "cold-ripple-noqueue")):
            if mine in medians and base in medians:
                ratios[f"{mine} / {base}"] = medians[mine]["mutations_per_s"] / medians[base]["mutations_per_s"]
        for name, value in ratios.items():
            print(f"  mutations/s {name}: {value:.2f}")
        if "ripple" in medians:
            r = medians["ripple"]
            base = medians.get("asyncpg", {}).get("mutations_per_s", float("nan"))
            print(f"  target (ripple >= asyncpg mutations/s, p99 <= 500 ms): {r['mutations_per_s']:.0f} vs {base:.0f}, "
                  f"p99 {r['p99_ms']:.0f} ms -> {'met' if r['mutations_per_s'] >= base and r['p99_ms'] <= 500 else 'NOT met'}")
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"hot_keys-{stamp}.json"
        path.write_text(json.dumps({"benchmark": "hot_keys", "utc": stamp, "machine": info, "args": vars(args),
                                    "medians": medians, "ratios": ratios, "runs": runs}, indent=1, default=str))
        print(f"results: {path.relative_to(ROOT)}")
    finally:
        bench.processes.stop_all()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        await admin.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        p = argparse.ArgumentParser()
        p.add_argument("_baseline")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--database-url", required=True)
        p.add_argument("--schema", required=True)
        p.add_argument("--policy", choices=["backoff", "naive"], required=True)
        a = p.parse_args()
        baseline_main(a.port, a.database_url, a.schema, a.policy)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database-url", default=os.environ.get("RIPPLE_TEST_DATABASE_URL", DEFAULT_DB))
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--counters", type=int, default=10)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--uncontended", action="store_true", help="also the 10,000-counter cases")
    p.add_argument("--only", type=lambda s: s.split(","), default=None, help="comma-separated case keys")
    args = p.parse_args()
    run_cancellable(lambda: bench_main(args), "interrupted; servers stopped and schema dropped")


if __name__ == "__main__":
    main()
