"""Latency of small requests while large request bodies are being posted, before and after.

What is measured
----------------
One client sends small queries one after another (`bench:get`, an index point lookup, through
`POST /api/query` on a keep-alive connection) and records each one's latency, while
`--posters` other clients (default 1) post large bodies back to back, each on its own
connection. Three cases, each a `--duration` window after a one-second warm-up:

* quiet      -- the small queries alone: the floor.
* big-ok     -- bodies of about 16 MB within Convex's value limits (`sink:size` with 970 arrays
                of 8192 numbers): decoding them is real work, the case issue 9 item 6 is about.
* big-refused -- bodies of about 16 MB over the limits (one array of 7.9 million numbers): the
                server should refuse them at once.

For each case: small queries answered, their p50 / p99 / max latency in ms, and the large
requests completed (with their status and mean duration). The whole set runs against two
servers in the same invocation, alternating, `--runs` times: "after", the working tree, and
"before", `--baseline` (a git revision, default the merge-base with main) exported with
`git archive` to a temporary directory and started from there with the same Python and the
same app (bench/app). The machine may be shared: figures are for this box at that moment;
compare before and after of the same run. Results go to bench/results/decode-<UTC time>.json.

    python bench/decode.py [--baseline REV] [--duration 12] [--runs 1] [--posters 1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_DB,
    HOST,
    ROOT,
    Processes,
    command_output,
    describe_machine,
    free_port,
    percentile,
    run_cancellable,
    wait_ready,
)

SCRIPT = Path(__file__).resolve()
APP_DIR = SCRIPT.parent / "app"
RESULTS_DIR = SCRIPT.parent / "results"
SMALL = json.dumps({"path": "bench:get", "args": {"key": "k000001"}}).encode()


def big_body(within_limits: bool) -> bytes:
    value: Any = [[1] * 8192 for _ in range(970)] if within_limits else [1] * 7_900_000
    return json.dumps({"path": "sink:size", "args": {"value": value}}, separators=(",", ":")).encode()


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/api/query", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def small_loop(port: int, stop: threading.Event, latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        while not stop.is_set():
            start = time.perf_counter()
            status, payload = post(conn, SMALL)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors.append(f"{status} {payload[:200]!r}")
    finally:
        conn.close()


def poster_loop(port: int, body: bytes, stop: threading.Event, done: list[tuple[int, float, str]]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=300)
    try:
        while not stop.is_set():
            start = time.perf_counter()
            status, payload = post(conn, body)
            done.append((status, time.perf_counter() - start, payload[:160].decode(errors="replace")))
    finally:
        conn.close()


def measure(port: int, body: bytes | None, posters: int, duration: float) -> dict[str, Any]:
    """One case: small queries for `duration` s (after 1 s of warm-up) while `posters` threads
    post `body` (None: nobody posts)."""
    stop_small, stop_big = threading.Event(), threading.Event()
    warm: list[float] = []
    big: list[tuple[int, float, str]] = []
    errors: list[str] = []
    threads = [threading.Thread(target=poster_loop, args=(port, body, stop_big, big), daemon=True)
               for _ in range(posters if body is not None else 0)]
    for t in threads:
        t.start()
    warmup = threading.Thread(target=small_loop, args=(port, stop_small, warm, errors), daemon=True)
    warmup.start()
    time.sleep(1.0)
    stop_small.set()
    warmup.join()
    stop_small.clear()
    latencies: list[float] = []
    small = threading.Thread(target=small_loop, args=(port, stop_small, latencies, errors), daemon=True)
    small.start()
    time.sleep(duration)
    stop_small.set()
    small.join()
    stop_big.set()
    for t in threads:
        t.join()
    ms = sorted(x * 1000 for x in latencies)
    statuses: dict[str, int] = {}
    for status, _, _ in big:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "small_answered": len(ms),
        "small_per_s": round(len(ms) / duration, 1),
        "small_p50_ms": round(percentile(ms, 50), 2),
        "small_p99_ms": round(percentile(ms, 99), 2),
        "small_max_ms": round(ms[-1], 2) if ms else None,
        "small_errors": errors[:5],
        "big_completed": len(big),
        "big_statuses": statuses,
        "big_mean_s": round(sum(d for _, d, _ in big) / len(big), 3) if big else None,
        "big_sample_answer": big[0][2] if big else None,
    }


def export_baseline(rev: str, into: Path) -> str:
    """The server package at `rev`, written under `into` (no checkout, nothing in the repository
    changes); returns the full commit id."""
    commit = command_output(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"])
    if not commit:
        raise SystemExit(f"decode.py: no such git revision: {rev}")
    archive = subprocess.run(["git", "archive", commit, "server"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return commit


async def bench(args: argparse.Namespace) -> None:
    import asyncpg

    namespace = "bench_" + secrets.token_hex(4)
    processes = Processes("decode")
    admin = await asyncpg.connect(args.database_url)
    with tempfile.TemporaryDirectory(prefix="ripple-baseline-") as base_dir:
        try:
            baseline = export_baseline(args.baseline, Path(base_dir))
            info = describe_machine(await admin.fetchval("SELECT version()"), ("uvicorn", "orjson", "starlette"),
                                    [*sorted((ROOT / "server").rglob("*.py")), SCRIPT, *sorted(APP_DIR.rglob("*.py"))],
                                    ("server", "bench"))
            print(f"after: working tree at {info['git_commit'][:12]}{' (dirty)' if info['git_dirty'] else ''}; "
                  f"before: {args.baseline} = {baseline[:12]}; {info['nproc']} CPUs ({info['cpu_model']}); "
                  f"posters {args.posters}, window {args.duration:g} s, {args.runs} run(s)", flush=True)
            bodies = {"quiet": None, "big-ok": big_body(True), "big-refused": big_body(False)}
            print("bodies: " + ", ".join(f"{k} {len(v) / 1e6:.1f} MB" for k, v in bodies.items() if v), flush=True)
            runs: list[dict[str, Any]] = []
            for run in range(1, args.runs + 1):
                for variant, cwd in (("before", Path(base_dir)), ("after", ROOT)):
                    port = free_port()
                    proc = processes.start(variant, [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
                                                     "--dir", str(APP_DIR), "--database-url", args.database_url,
                                                     "--db-schema", namespace],
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=cwd)
                    try:
                        await wait_ready(proc, port)
                        for case, body in bodies.items():
                            result = await asyncio.to_thread(measure, port, body, args.posters, args.duration)
                            runs.append({"run": run, "variant": variant, "case": case, **result})
                            print(f"run {run} {variant:6} {case:11}  small: {result['small_answered']:5} answered, "
                                  f"p50 {result['small_p50_ms']:8.1f} ms, p99 {result['small_p99_ms']:8.1f} ms, "
                                  f"max {result['small_max_ms']:8.1f} ms   big: {result['big_completed']} done "
                                  f"{result['big_statuses']} mean {result['big_mean_s']} s", flush=True)
                    finally:
                        processes.stop(proc)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            out = RESULTS_DIR / f"decode-{stamp}.json"
            out.write_text(json.dumps({
                "benchmark": "decode",
                "timestamp_utc": stamp,
                "machine": info,
                "baseline": {"rev": args.baseline, "commit": baseline},
                "settings": {"duration_s": args.duration, "runs": args.runs, "posters": args.posters,
                             "body_bytes": {k: len(v) for k, v in bodies.items() if v},
                             "small_request": SMALL.decode(), "database_url": args.database_url,
                             "note": "all processes on one (possibly shared) machine; compare within a run"},
                "runs": runs,
            }, indent=2) + "\n")
            print(f"wrote {out.relative_to(ROOT)}")
        finally:
            processes.stop_all()
            await admin.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_base = command_output(["git", "merge-base", "HEAD", "main"]) or "HEAD"
    parser.add_argument("--baseline", default=default_base, help="git revision to compare with (default: merge-base with main)")
    parser.add_argument("--duration", type=float, default=12.0, help="measurement window per case, seconds (default 12)")
    parser.add_argument("--runs", type=int, default=1, help="before/after pairs (default 1)")
    parser.add_argument("--posters", type=int, default=1, help="clients posting large bodies at once (default 1)")
    parser.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL URL (default {DEFAULT_DB})")
    args = parser.parse_args()
    run_cancellable(lambda: bench(args), "decode.py: interrupted")


if __name__ == "__main__":
    main()
