"""Scheduler throughput and wake-up latency: Ripple against a bare SKIP LOCKED loop, in one run.

What is measured
----------------
* drain     -- `--jobs` (5,000) scheduled no-op mutations (`bench:noop`), all due at the same
               instant T0, drained by one and by two `ripple serve` processes (each with its
               default RIPPLE_SCHEDULER_CONCURRENCY of 10). They are scheduled through the HTTP API
               (`bench:enqueue`, 1,000 per call: the per-call limit) before T0, while the
               processes idle. jobs/s = jobs / (last completion - T0), from the jobs' own
               `completedTime`. Reported with the conflicts/retries the processes counted
               (`ripple_scheduler_conflicts_total`, `ripple_mutation_retries_total`).
* timer     -- `--spread` (500) jobs due 10 ms apart (100/s, below capacity), one process:
               the delay between each job's `scheduledTime` and its `startedTime` (the moment a
               worker began running it) says how precisely the timer for future jobs fires.
* notify    -- `--kicks` (200) calls, 20 ms apart, of a mutation that schedules one job with
               `run_after(0)`: delay from `scheduledTime` (inside that mutation, before its
               commit) to `startedTime`: commit + NOTIFY + wake + claim.
* baseline  -- the same three workloads on a bare loop in asyncpg: a table (id, due, state,
               started, done) indexed on (state, due); N processes x 10 connections, each
               repeating `UPDATE ... WHERE id = (SELECT id ... WHERE state = 'pending' AND due
               <= now ORDER BY due LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id` in autocommit;
               idle workers sleep until the earliest pending due time (re-read after each miss)
               or a NOTIFY on a dedicated LISTEN connection, as Ripple does. The floor: one
               statement per job, no documents, no change log, no savepoint.

Percentiles are nearest-rank over all jobs of a run; each workload runs `--runs` times
(interleaved) and the median over runs is reported. Everything shares this machine's cores
(PostgreSQL, the servers, the baseline workers and this script); the enqueueing finishes before
T0, so the load generator is idle while jobs drain. Results go to
bench/results/scheduler-<UTC timestamp>.json with the git commit and machine information.

    python bench/scheduler.py [--runs 3] [--jobs 5000]
                              [--database-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from common import DEFAULT_DB, ROOT, command_output, cpu_model, free_port, percentile

APP_DIR = ROOT / "bench" / "scheduler_app"
RESULTS_DIR = ROOT / "bench" / "results"
BASELINE_WORKERS = 10
ENQUEUE_CHUNK = 1000


def delays_summary(delays_ms: list[float]) -> dict[str, float]:
    ordered = sorted(delays_ms)
    return {"p50_ms": percentile(ordered, 50), "p99_ms": percentile(ordered, 99), "max_ms": max(delays_ms)}


# ---------------------------------------------------------------------------------------------
# Ripple
# ---------------------------------------------------------------------------------------------

class RippleCluster:
    """`processes` x `ripple serve` on one fresh PostgreSQL schema."""

    def __init__(self, db_url: str, processes: int, log_dir: Path) -> None:
        self.db_url, self.n, self.log_dir = db_url, processes, log_dir
        self.schema = "bench_sched_" + secrets.token_hex(4)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    async def __aenter__(self) -> RippleCluster:
        for i in range(self.n):
            port = free_port()
            self.procs.append(self._spawn(port, self.log_dir / f"ripple-{self.schema}-{i}.log"))
            self.urls.append(f"http://127.0.0.1:{port}")
            await self._wait_healthy(self.urls[-1], self.procs[-1])  # one at a time: schema setup
        return self

    def _spawn(self, port: int, log_path: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "DATABASE_URL": self.db_url, "RIPPLE_DB_SCHEMA": self.schema}
        with log_path.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--dir", str(APP_DIR)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

    async def _wait_healthy(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(600):
                if proc.poll() is not None:
                    raise RuntimeError(f"ripple serve exited with {proc.returncode}; see {self.log_dir}")
                try:
                    if (await client.get(f"{url}/_ripple/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{url} not healthy")

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        conn = await asyncpg.connect(self.db_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()

    async def mutation(self, path: str, args: dict[str, Any]) -> Any:
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(f"{self.urls[0]}/api/mutation", json={"path": path, "args": args})
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} failed: {body}")
        return body["value"]

    async def metric(self, name: str) -> float:
        total = 0.0
        async with httpx.AsyncClient() as client:
            for url in self.urls:
                for line in (await client.get(f"{url}/_ripple/metrics")).text.splitlines():
                    if line.startswith(name):
                        total += float(line.rsplit(" ", 1)[1])
        return total

    async def jobs(self) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.db_url)
        try:
            rows = await conn.fetch(f'SELECT doc::text AS doc FROM "{self.schema}"."_scheduled_functions"')
        finally:
            await conn.close()
        return [json.loads(r["doc"]) for r in rows]

    async def wait_done(self, expected: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        conn = await asyncpg.connect(self.db_url)
        try:
            while time.monotonic() < deadline:
                done = await conn.fetchval(
                    f'SELECT count(*) FROM "{self.schema}"."_scheduled_functions" '
                    "WHERE doc->'state'->>'kind' IN ('success', 'failed')")
                if done >= expected:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"only {done} of {expected} jobs finished within {timeout} s")
        finally:
            await conn.close()
        jobs = await self.jobs()
        failed = [j for j in jobs if j["state"]["kind"] != "success"]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")
        return jobs


async def ripple_drain(db_url: str, processes: int, n_jobs: int, log_dir: Path) -> dict[str, Any]:
    async with RippleCluster(db_url, processes, log_dir) as cluster:
        t0 = time.time() + 1.5 + 0.8 * math.ceil(n_jobs / ENQUEUE_CHUNK)
        for start in range(0, n_jobs, ENQUEUE_CHUNK):
            await cluster.mutation("bench:enqueue", {"n": min(ENQUEUE_CHUNK, n_jobs - start), "at": t0})
        if time.time() >= t0:
            raise RuntimeError("enqueueing took longer than planned: the drain started early")
        jobs = await cluster.wait_done(n_jobs, 300)
        last = max(j["completedTime"] for j in jobs) / 1000
        return {
            "jobs": n_jobs,
            "jobs_per_s": n_jobs / (last - t0),
            "drain_s": last - t0,
            **{f"queue_wait_{k}": v for k, v in delays_summary([j["startedTime"] - j["scheduledTime"] for j in jobs]).items()},
            "conflicts": await cluster.metric("ripple_scheduler_conflicts_total"),
            "mutation_retries": await cluster.metric("ripple_mutation_retries_total"),
        }


async def ripple_latency(db_url: str, n_spread: int, n_kicks: int, log_dir: Path) -> dict[str, Any]:
    async with RippleCluster(db_url, 1, log_dir) as cluster:
        t0 = time.time() + 2.0
        await cluster.mutation("bench:enqueue", {"n": n_spread, "at": t0, "step": 0.01})
        spread = await cluster.wait_done(n_spread, 120)
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(n_kicks):
                r = await client.post(f"{cluster.urls[0]}/api/mutation", json={"path": "bench:kick", "args": {}})
                assert r.json()["status"] == "success", r.text
                await asyncio.sleep(0.02)
        kicks = [j for j in await cluster.wait_done(n_spread + n_kicks, 60) if j["scheduledTime"] >= t0 * 1000 + n_spread * 10]
        return {
            "timer": delays_summary([j["startedTime"] - j["scheduledTime"] for j in spread]),
            "notify": delays_summary([j["startedTime"] - j["scheduledTime"] for j in kicks]),
        }


# ---------------------------------------------------------------------------------------------
# The bare SKIP LOCKED loop
# ---------------------------------------------------------------------------------------------

BASE_DDL = """
CREATE TABLE jobs (id bigserial PRIMARY KEY, due float8 NOT NULL, state text NOT NULL DEFAULT 'pending',
                   started float8, done float8);
CREATE INDEX jobs_state_due ON jobs (state, due);
"""
BASE_CLAIM = """
UPDATE jobs SET state = 'done', started = $1, done = extract(epoch FROM clock_timestamp()) * 1000
WHERE id = (SELECT id FROM jobs WHERE state = 'pending' AND due <= $1 ORDER BY due LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""
BASE_NEXT = "SELECT min(due) FROM jobs WHERE state = 'pending'"


async def baseline_process_main(db_url: str, schema: str, seconds: float) -> None:
    """One baseline worker process: BASELINE_WORKERS connections claiming until told to stop."""
    settings = {"search_path": schema}
    listen = await asyncpg.connect(db_url, server_settings=settings)
    wake = asyncio.Event()
    await listen.add_listener(f"bench_{schema}", lambda *_: wake.set())
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        conn = await asyncpg.connect(db_url, server_settings=settings)
        try:
            while time.monotonic() < stop_at:
                if await conn.fetchval(BASE_CLAIM, time.time() * 1000) is not None:
                    continue
                wake.clear()
                nxt = await conn.fetchval(BASE_NEXT)
                sleep = 0.5 if nxt is None else max(0.0, nxt / 1000 - time.time())
                try:
                    await asyncio.wait_for(wake.wait(), min(sleep, 0.5))
                except TimeoutError:
                    pass
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(BASELINE_WORKERS)))
    await listen.close()


class Baseline:
    def __init__(self, db_url: str, processes: int, seconds: float) -> None:
        self.db_url, self.n, self.seconds = db_url, processes, seconds
        self.schema = "bench_base_" + secrets.token_hex(4)

    async def __aenter__(self) -> Baseline:
        self.conn = await asyncpg.connect(self.db_url)
        await self.conn.execute(f'CREATE SCHEMA "{self.schema}"; SET search_path = "{self.schema}"; {BASE_DDL}')
        return self

    def start_workers(self) -> list[subprocess.Popen[bytes]]:
        return [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--baseline-worker", self.schema,
                                  "--database-url", self.db_url, "--seconds", str(self.seconds)])
                for _ in range(self.n)]

    async def wait_done(self, expected: int, timeout: float) -> list[asyncpg.Record]:
        deadline = time.monotonic() + timeout
        while await self.conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'") < expected:
            if time.monotonic() > deadline:
                raise RuntimeError("baseline did not finish")
            await asyncio.sleep(0.1)
        return list(await self.conn.fetch("SELECT due, started, done FROM jobs"))

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE')
        await self.conn.close()


async def baseline_drain(db_url: str, processes: int, n_jobs: int) -> dict[str, Any]:
    async with Baseline(db_url, processes, seconds=60) as base:
        workers = base.start_workers()
        try:
            await asyncio.sleep(1.0)  # connected and idle
            t0 = time.time() + 1.0
            await base.conn.execute("INSERT INTO jobs (due) SELECT $1::float8 FROM generate_series(1, $2)", t0 * 1000, n_jobs)
            rows = await base.wait_done(n_jobs, 120)
        finally:
            for w in workers:
                w.terminate()
                w.wait()
        last = max(r["done"] for r in rows) / 1000
        return {"jobs": n_jobs, "jobs_per_s": n_jobs / (last - t0), "drain_s": last - t0,
                **{f"queue_wait_{k}": v for k, v in delays_summary([r["started"] - r["due"] for r in rows]).items()}}


async def baseline_latency(db_url: str, n_spread: int, n_kicks: int) -> dict[str, Any]:
    async with Baseline(db_url, 1, seconds=30) as base:
        workers = base.start_workers()
        try:
            await asyncio.sleep(1.0)
            t0 = time.time() + 1.0
            await base.conn.execute("INSERT INTO jobs (due) SELECT $1::float8 + 10 * g FROM generate_series(0, $2 - 1) g",
                                    t0 * 1000, n_spread)
            spread = await base.wait_done(n_spread, 60)
            for _ in range(n_kicks):
                async with base.conn.transaction():
                    await base.conn.execute("INSERT INTO jobs (due) VALUES ($1)", time.time() * 1000)
                    await base.conn.execute(f"NOTIFY bench_{base.schema}")
                await asyncio.sleep(0.02)
            rows = await base.wait_done(n_spread + n_kicks, 60)
        finally:
            for w in workers:
                w.terminate()
                w.wait()
        kicks = [r for r in rows if r["due"] >= t0 * 1000 + n_spread * 10]
        return {"timer": delays_summary([r["started"] - r["due"] for r in spread]),
                "notify": delays_summary([r["started"] - r["due"] for r in kicks])}


# ---------------------------------------------------------------------------------------------
# Running it all
# ---------------------------------------------------------------------------------------------

def machine_info(pg_version: str) -> dict[str, Any]:
    return {"git_commit": command_output(["git", "rev-parse", "HEAD"]),
            "git_dirty": bool(command_output(["git", "status", "--porcelain"])),
            "nproc": os.cpu_count(), "cpu": cpu_model(fallback=platform.processor()), "kernel": platform.release(),
            "python": platform.python_version(), "postgres": pg_version, "host": socket.gethostname()}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = median_of([r[key] for r in runs])
        elif isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in runs)
    return out


async def bench(args: argparse.Namespace) -> None:
    log_dir = Path(args.log_dir)
    conn = await asyncpg.connect(args.database_url)
    pg_version = await conn.fetchval("SHOW server_version")
    await conn.close()
    info = machine_info(pg_version)
    print(f"commit {info['git_commit'][:12]}{' (dirty tree)' if info['git_dirty'] else ''}; {info['nproc']} CPUs "
          f"({info['cpu']}); PostgreSQL {pg_version}; {args.runs} runs", flush=True)
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        result: dict[str, Any] = {}
        for processes in (1, 2):
            result[f"ripple_drain_{processes}p"] = await ripple_drain(args.database_url, processes, args.jobs, log_dir)
            result[f"baseline_drain_{processes}p"] = await baseline_drain(args.database_url, processes, args.jobs)
        result["ripple_latency"] = await ripple_latency(args.database_url, args.spread, args.kicks, log_dir)
        result["baseline_latency"] = await baseline_latency(args.database_url, args.spread, args.kicks)
        runs.append(result)
        print(f"run {run + 1}: " + json.dumps(result, default=lambda x: round(x, 2)), flush=True)
    median = median_of(runs)
    print("\nmedian over runs")
    print(f"{'drain of ' + str(args.jobs) + ' no-op mutations':<34}{'jobs/s':>9}{'ratio':>8}{'queue p50 ms':>14}"
          f"{'conflicts':>11}")
    for p in (1, 2):
        r, b = median[f"ripple_drain_{p}p"], median[f"baseline_drain_{p}p"]
        print(f"{'ripple, ' + str(p) + ' process(es)':<34}{r['jobs_per_s']:>9.0f}{r['jobs_per_s'] / b['jobs_per_s']:>8.2f}"
              f"{r['queue_wait_p50_ms']:>14.0f}{r['conflicts']:>11.0f}")
        print(f"{'bare SKIP LOCKED, ' + str(p) + ' process(es)':<34}{b['jobs_per_s']:>9.0f}{1.0:>8.2f}"
              f"{b['queue_wait_p50_ms']:>14.0f}{'-':>11}")
    print(f"\n{'due -> start delay (ms)':<34}{'p50':>9}{'p99':>9}{'max':>9}")
    for name in ("timer", "notify"):
        for who in ("ripple", "baseline"):
            d = median[f"{who}_latency"][name]
            print(f"{who + ', ' + name:<34}{d['p50_ms']:>9.1f}{d['p99_ms']:>9.1f}{d['max_ms']:>9.1f}")
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"scheduler-{stamp}.json"
    path.write_text(json.dumps({"machine": info, "args": vars(args), "median": median, "runs": runs}, indent=2))
    print(f"\nwrote {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--spread", type=int, default=500)
    parser.add_argument("--kicks", type=int, default=200)
    parser.add_argument("--log-dir", default="/tmp/ripple-bench-scheduler")
    parser.add_argument("--baseline-worker", metavar="SCHEMA", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    if args.baseline_worker:
        asyncio.run(baseline_process_main(args.database_url, args.baseline_worker, args.seconds))
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
