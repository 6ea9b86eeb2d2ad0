"""What recording the log stream costs each function call (server/core/log_stream.py).

What is measured
----------------
* record   -- `LogStream.record` alone, `--records` times in a loop, for an execution without
              lines and for one with five: microseconds per call.
* calls    -- in-process `Runtime.call` of bench/app's `bench:get` (one index lookup on a seeded
              table) and `bench:insert` (one inserted document), sequentially, over a real
              PostgreSQL (`--database-url`, a fresh schema dropped afterwards). Rounds alternate
              between the runtime as it is ("recorded") and the same runtime with
              `log_stream.record` replaced by a no-op ("not recorded"): the baseline runs in the
              same process, on the same connections, interleaved, so load from elsewhere on the
              machine hits both alike. Figures are the p50 and p99 of per-call latency over all
              rounds, and the ratio of the p50s.

Results go to bench/results/log_stream-<UTC time>.json.

    python bench/log_stream.py [--database-url URL] [--calls 2000] [--rounds 6] [--records 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
import timeit
from pathlib import Path
from typing import Any

from common import describe_machine, percentile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
APP_DIR = ROOT / "bench" / "app"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"


def record_cost(records: int) -> dict[str, float]:
    from server.core import log_stream, logs

    out = {}
    for lines in (0, 5):
        stream = log_stream.LogStream()
        buffer = logs.LogBuffer("Q bench:get", keep=False)
        for i in range(lines):
            buffer.add("LOG", f"line {i}")
        seconds = timeit.timeit(lambda s=stream, b=buffer: s.record("query", "bench:get", b), number=records)
        out[f"record_us_{lines}_lines"] = seconds / records * 1e6
    return out


async def call_latencies(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from server.config import Config
    from server.core.database import Database
    from server.core.runtime import Runtime

    namespace = "bench_" + secrets.token_hex(4)
    db = Database(args.database_url, namespace)
    await db.connect(min_size=1, max_size=4)
    runtime = Runtime(Config(app_dir=APP_DIR, database_url=args.database_url, db_schema=namespace, dev=False), db)
    recording = runtime.log_stream.record
    samples: dict[str, dict[str, list[float]]] = {"get": {"recorded": [], "not recorded": []},
                                                  "insert": {"recorded": [], "not recorded": []}}
    try:
        await runtime.load()
        await runtime.call("mutation", "bench:seed", {"prefix": "k", "start": 0, "count": 1000})
        calls = {"get": ("query", "bench:get", lambda i: {"key": f"k{i % 1000}"}),
                 "insert": ("mutation", "bench:insert", lambda i: {"key": f"i{i}", "value": i})}
        for name, (kind, path, arguments) in calls.items():
            n = args.calls if kind == "query" else max(1, args.calls // 4)
            for i in range(200):  # warm up
                await runtime.call(kind, path, arguments(i))  # type: ignore[arg-type]
            for round_ in range(args.rounds):
                for mode in (("recorded", "not recorded") if round_ % 2 == 0 else ("not recorded", "recorded")):
                    runtime.log_stream.record = recording if mode == "recorded" else (lambda *a, **k: None)  # type: ignore[method-assign]
                    for i in range(n):
                        started = time.perf_counter()
                        await runtime.call(kind, path, arguments(round_ * n + i))  # type: ignore[arg-type]
                        samples[name][mode].append((time.perf_counter() - started) * 1e6)
        async with db.acquire() as conn:
            pg_version = await conn.fetchval("SHOW server_version")
    finally:
        await db.close()
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        await admin.close()
    figures: dict[str, Any] = {"postgresql": pg_version}
    for name, modes in samples.items():
        for mode, values in modes.items():
            values.sort()
            figures[f"{name} {mode}"] = {"p50_us": percentile(values, 50), "p99_us": percentile(values, 99),
                                         "calls": len(values)}
        figures[f"{name} p50 ratio recorded/not"] = (figures[f"{name} recorded"]["p50_us"]
                                                     / figures[f"{name} not recorded"]["p50_us"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL URL (default {DEFAULT_DB})")
    parser.add_argument("--calls", type=int, default=2000, help="queries per round (inserts: a quarter)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per mode, alternating")
    parser.add_argument("--records", type=int, default=200_000, help="LogStream.record calls timed")
    args = parser.parse_args()
    result: dict[str, Any] = record_cost(args.records)
    result.update(asyncio.run(call_latencies(args)))
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key:28} p50 {value['p50_us']:8.1f} µs   p99 {value['p99_us']:8.1f} µs   ({value['calls']} calls)")
        elif isinstance(value, float):
            print(f"{key:28} {value:8.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"log_stream-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    machine = describe_machine(str(result.pop("postgresql", "")), ["asyncpg", "uvloop"],
                               [ROOT / "server" / "core" / "log_stream.py", ROOT / "server" / "core" / "logs.py"])
    out.write_text(json.dumps({"benchmark": "log_stream", "args": vars(args), "machine": machine, "figures": result},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
