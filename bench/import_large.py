"""`ripple import` of one large JSONL table, per source tree: time, documents/s and peak memory.

What is measured
----------------
The file: `--docs` (200,000) messages, about 100 bytes of body each, generated once into a
temporary directory, imported into table `--table` (messages) of the app `--app`
(bench/search_app: a table with a full-text search index, so each document writes its postings
too; tests/apps/portable has that table and `notes`, a table without a model or index of its own).
For each tree (`--tree name=path`, default this checkout), `--runs` times, alternating between
trees: a fresh `ripple serve --workers 1` of that tree on a fresh PostgreSQL schema, then that tree's
`ripple import --table TABLE FILE` as a subprocess, timed from its start to its exit (upload,
validation, the one transaction, the commit); with `--replace`, then `ripple import --replace`
of the same file over it, timed the same way (every document deleted and written again).
Meanwhile the server's VmRSS is sampled every 50 ms: its RSS before the import and its peak are
reported; the CLI's peak RSS comes from wait4 (ru_maxrss). A run whose import does not exit 0
fails the script.

    python bench/import_large.py                                   # this checkout
    python bench/import_large.py --tree before=/work/main --tree after=.  --runs 2
    python bench/import_large.py --docs 40000 --replace --app tests/apps/portable --table notes

Results go to bench/results/import_large-<UTC timestamp>.json with the machine description.
"""

from __future__ import annotations

import argparse
import asyncio
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

import asyncpg
from common import DEFAULT_DB, ROOT, Processes, describe_machine, free_port, wait_ready

APP = ROOT / "bench" / "search_app"
KEY = "bench-" + secrets.token_hex(8)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """The peak VmRSS of a process, sampled every 50 ms on a thread until `stop`."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.done = pid, rss_kib(pid), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def write_file(path: Path, docs: int) -> None:
    words = ["river", "stone", "quick", "silver", "moon", "garden", "quiet", "storm", "amber", "lantern"]
    with path.open("w") as out:
        for i in range(docs):
            body = " ".join(words[(i * k + k) % len(words)] for k in range(1, 12)) + f" message {i}"
            out.write(json.dumps({"body": body, "channel": f"c{i % 20}"}) + "\n")


async def sql(db: str, statement: str) -> Any:
    conn = await asyncpg.connect(db)
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


def environment(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
    env.update(PYTHONPATH=str(tree), RIPPLE_ADMIN_KEY=KEY)
    return env


def timed_import(tree: Path, env: dict[str, str], table: str, data: Path, port: int, *flags: str) -> dict[str, Any]:
    """One `ripple import` as a subprocess: its wall time, its peak RSS and its last line."""
    started = time.monotonic()
    client = subprocess.Popen([sys.executable, "-m", "server.cli", "import", "--table", table, *flags, str(data),
                               "--url", f"http://127.0.0.1:{port}"], env=env, cwd=tree,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert client.stderr is not None
    stderr = client.stderr.read()
    _, status, usage = os.wait4(client.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"ripple import {' '.join(flags)} failed:\n{stderr.decode(errors='replace')}")
    return {"seconds": round(seconds, 2), "cli_rss_peak_mib": round(usage.ru_maxrss / 1024, 1),
            "stderr_tail": stderr.decode(errors="replace").splitlines()[-1:]}


def one_run(tree: Path, data: Path, docs: int, args: argparse.Namespace, processes: Processes) -> dict[str, Any]:
    schema, port = "bench_import_" + secrets.token_hex(4), free_port()
    env = environment(tree)
    server = processes.start("server", [sys.executable, "-m", "server.cli", "serve", "--dir", str(args.app),
                                        "--port", str(port), "--database-url", args.database_url, "--db-schema", schema,
                                        "--workers", "1"],
                             env=env, cwd=tree)
    try:
        asyncio.run(wait_ready(server, port))
        before = rss_kib(server.pid)
        sampler = Sampler(server.pid)
        result = timed_import(tree, env, args.table, data, port)
        result["docs_per_s"] = round(docs / result["seconds"])
        if args.replace:
            replaced = timed_import(tree, env, args.table, data, port, "--replace")
            result["replace"] = {**replaced, "docs_per_s": round(docs / replaced["seconds"])}
        peak = sampler.stop()
        return {**result, "server_rss_before_mib": round(before / 1024, 1), "server_rss_peak_mib": round(peak / 1024, 1)}
    finally:
        processes.stop(server)
        asyncio.run(sql(args.database_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="name=path of a source tree (default: this one)")
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--database-url", default=os.environ.get("RIPPLE_TEST_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--app", type=lambda p: Path(p).resolve(), default=APP,
                        help="app directory, the same for every tree (default: bench/search_app)")
    parser.add_argument("--table", default="messages", help="the table imported into (default: messages)")
    parser.add_argument("--replace", action="store_true", help="then time a --replace of the same file")
    args = parser.parse_args()
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree] or [("this", ROOT)]
    processes = Processes("import_large")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "messages.jsonl"
        write_file(data, args.docs)
        print(f"{args.docs:,} documents, {data.stat().st_size / 2**20:.1f} MiB")
        try:
            for run in range(args.runs):
                for name, tree in trees:
                    result = one_run(tree, data, args.docs, args, processes)
                    results[name].append(result)
                    replaced = result.get("replace")
                    print(f"{name} run {run + 1}: {result['seconds']} s ({result['docs_per_s']:,} documents/s)"
                          + (f", --replace {replaced['seconds']} s ({replaced['docs_per_s']:,}/s)" if replaced else "")
                          + f", server RSS {result['server_rss_before_mib']} -> peak {result['server_rss_peak_mib']} MiB, "
                          f"CLI peak {result['cli_rss_peak_mib']} MiB")
        finally:
            processes.stop_all()
        pg_version = asyncio.run(sql(args.database_url, "SHOW server_version"))
        out = ROOT / "bench" / "results" / f"import_large-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.write_text(json.dumps({
            "docs": args.docs, "file_bytes": data.stat().st_size, "trees": {n: str(t) for n, t in trees},
            "app": str(args.app), "table": args.table, "replace": args.replace,
            "results": results,
            "machine": describe_machine(pg_version, ["asyncpg", "uvicorn", "starlette"],
                                        [*(ROOT / "server").rglob("*.py"), Path(__file__).resolve()]),
        }, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
