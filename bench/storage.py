"""File storage throughput: uploads and downloads through Ripple against the same bytes moved
without it, in one run.

What is measured
----------------
Files of 1 MB and 100 MB (`--sizes`, in 10^6 bytes, random bytes in a file on disk), moved one
at a time, with each backend:

* local -- a `ripple serve` with RIPPLE_STORAGE=local (a temporary directory), against a plain
           file copy: `shutil.copyfile` of the same source into that directory (upload), and
           reading a stored file to the end (download).
* s3    -- a `ripple serve` with RIPPLE_STORAGE=s3 on moto's S3 server (`python -m moto.server`,
           a subprocess on loopback), against the minio SDK in this process talking to that same
           endpoint directly: `fput_object` of the same file (upload), `get_object` read to the
           end (download), in another bucket.

and, for both, the HTTP floor (`storage_floor.py`): uvicorn + Starlette configured as Ripple runs
them, receiving a POST and discarding it, and sending zeros, with the same client. It is what any
upload or download through this HTTP stack costs on this box, so it tells Ripple's own work
from the stack's; the load generator (this process) is measured by it too.

Through Ripple, an upload is the Convex flow: the `files:upload_url` mutation (not timed), then
the timed POST of the file's bytes (Content-Length, streamed from disk in 1 MiB blocks) to that
URL until its `{"storageId"}` answer. A download is a timed GET of `{base}/api/storage/<id>`
(the URL from the `files:url` query, not timed) read to the end in 1 MiB reads; on S3 that GET
is answered 302 to a presigned URL, which is followed and timed too. Every download's byte count
is checked. Files are deleted after each transfer (not timed), so nothing accumulates.

Each run does `--repeat-small` (default 20) transfers of each file under 10 MB and
`--repeat-large` (3) of the larger ones, Ripple and baseline alternating (which goes first
alternates too); `--runs` (3) runs. Printed: the median MB/s (10^6 bytes per second) over all
transfers of a case, min and max, and Ripple / baseline of the medians. Also the servers' peak
RSS (VmHWM), which shows whether a 100 MB file was ever held in memory.

Everything runs on this machine: the client (this process), the Ripple servers, moto and
PostgreSQL share its cores, and the files sit in the page cache, so the figures are of Ripple's
own overhead on this box, not of a disk or a network. moto is a Python server: its own speed caps
both S3 paths, and the ratio is what the S3 figures are for. Results go to
bench/results/storage-<UTC timestamp>.json with the git commit, a digest of the sources measured
and machine information.

    python bench/storage.py [--sizes 1,100] [--runs 3] [--repeat-small 20] [--repeat-large 3]
                            [--database-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_DB,
    HOST,
    ROOT,
    Processes,
    describe_machine,
    free_port,
    http_call,
    run_cancellable,
    wait_port,
    wait_ready,
)

SCRIPT = Path(__file__).resolve()
APP_DIR = SCRIPT.parent / "storage_app"
RESULTS_DIR = SCRIPT.parent / "results"
BLOCK = 1 << 20  # what the client sends and reads at a time
MB = 1_000_000
KEYS = ("ripple-bench", "ripple-bench-secret")


def call(port: int, kind: str, path: str, args: dict[str, Any]) -> Any:
    status, body = http_call(port, "POST", f"/api/{kind}", {"path": path, "args": args})
    answer = json.loads(body)
    if status != 200 or answer.get("status") != "success":
        raise RuntimeError(f"{path} answered {status}: {body[:300]!r}")
    return answer["value"]


def post_file(url: str, source: Path, size: int) -> str:
    """POST the file's bytes to an upload URL; the storage id it answers."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600, blocksize=BLOCK)
    try:
        with source.open("rb") as body:
            conn.request("POST", f"{parts.path}?{parts.query}", body=body,
                         headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
            response = conn.getresponse()
            answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"upload answered {response.status}: {answer[:300]!r}")
        return str(json.loads(answer)["storageId"])
    finally:
        conn.close()


def get_to_end(url: str, redirects: int = 1) -> int:
    """GET `url` (following one redirect) and read the body to the end; its length."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path)
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307) and redirects:
            response.read()
            return get_to_end(response.headers["Location"], redirects - 1)
        if response.status != 200:
            raise RuntimeError(f"GET {parts.path} answered {response.status}: {response.read()[:300]!r}")
        total = 0
        while chunk := response.read(BLOCK):
            total += len(chunk)
        return total
    finally:
        conn.close()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def check_size(got: int, size: int, what: str) -> None:
    if got != size:
        raise RuntimeError(f"{what}: read {got} bytes of {size}")


class Ripple:
    """One `ripple serve` with one storage backend, moved through as a client does."""

    def __init__(self, port: int) -> None:
        self.port = port

    def upload(self, source: Path, size: int) -> tuple[float, str]:
        url = call(self.port, "mutation", "files:upload_url", {})
        return timed(lambda: post_file(url, source, size))

    def download(self, storage_id: str, size: int) -> float:
        url = call(self.port, "query", "files:url", {"id": storage_id})
        seconds, got = timed(lambda: get_to_end(url))
        check_size(got, size, "ripple download")
        return seconds

    def remove(self, storage_id: str) -> None:
        call(self.port, "mutation", "files:remove", {"id": storage_id})


class DirectS3:
    """The minio SDK against the same endpoint, in a bucket of its own."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        from minio import Minio

        self.client = Minio(endpoint, access_key=KEYS[0], secret_key=KEYS[1], secure=False)
        self.bucket = bucket
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)

    def upload(self, source: Path, size: int) -> tuple[float, str]:
        key = secrets.token_hex(8)
        return timed(lambda: self.client.fput_object(self.bucket, key, str(source)))[0], key

    def download(self, key: str, size: int) -> float:
        def read() -> int:
            response = self.client.get_object(self.bucket, key)
            try:
                total = 0
                while chunk := response.read(BLOCK):
                    total += len(chunk)
                return total
            finally:
                response.close()
                response.release_conn()

        seconds, got = timed(read)
        check_size(got, size, "direct S3 download")
        return seconds

    def remove(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)


class HttpFloor:
    """The same client against storage_floor.py: the HTTP stack alone."""

    def __init__(self, port: int) -> None:
        self.port = port

    def upload(self, source: Path, size: int) -> tuple[float, str]:
        return timed(lambda: post_file(f"http://{HOST}:{self.port}/upload?x=1", source, size))[0], ""

    def download(self, _: str, size: int) -> float:
        seconds, got = timed(lambda: get_to_end(f"http://{HOST}:{self.port}/download/{size}"))
        check_size(got, size, "floor download")
        return seconds

    def remove(self, _: str) -> None:
        pass


class FileCopy:
    """A plain copy into the directory Ripple stores local files in, and reading it back."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def upload(self, source: Path, size: int) -> tuple[float, str]:
        target = self.directory / secrets.token_hex(8)
        return timed(lambda: shutil.copyfile(source, target))[0], str(target)

    def download(self, path: str, size: int) -> float:
        def read() -> int:
            total = 0
            with open(path, "rb") as f:
                while chunk := f.read(BLOCK):
                    total += len(chunk)
            return total

        seconds, got = timed(read)
        check_size(got, size, "file read")
        return seconds

    def remove(self, path: str) -> None:
        os.unlink(path)


def make_source(directory: Path, size: int) -> Path:
    path = directory / f"source-{size}"
    with path.open("wb") as f:
        left = size
        while left:
            n = min(BLOCK, left)
            f.write(os.urandom(n))
            left -= n
    return path


def summary(transfers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median, min and max MB/s per (backend, size, direction, path), and Ripple / baseline."""
    cases: dict[tuple[str, int, str], dict[str, list[float]]] = {}
    for t in transfers:
        rates = cases.setdefault((t["backend"], t["size"], t["direction"]), {}).setdefault(t["path"], [])
        rates.append(t["size"] / t["seconds"] / MB)
    rows = []
    for (backend, size, direction), paths in cases.items():
        row: dict[str, Any] = {"backend": backend, "size_mb": size / MB, "direction": direction}
        for path, rates in paths.items():
            row[path] = {"median_mb_s": round(statistics.median(rates), 1), "min_mb_s": round(min(rates), 1),
                         "max_mb_s": round(max(rates), 1), "transfers": len(rates)}
        row["ratio"] = round(row["ripple"]["median_mb_s"] / row["baseline"]["median_mb_s"], 3)
        if "floor" in row:
            row["ratio_to_floor"] = round(row["ripple"]["median_mb_s"] / row["floor"]["median_mb_s"], 3)
        rows.append(row)
    return rows


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


async def bench(args: argparse.Namespace) -> None:
    import asyncpg

    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]
    schemas = {backend: f"bench_{backend}_{secrets.token_hex(4)}" for backend in ("local", "s3")}
    processes = Processes("storage")
    admin = await asyncpg.connect(args.database_url)
    with tempfile.TemporaryDirectory(prefix="ripple-storage-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            info = describe_machine(await admin.fetchval("SELECT version()"), ("minio", "moto", "uvicorn", "starlette"),
                                    [*sorted((ROOT / "server").rglob("*.py")), SCRIPT, *sorted(APP_DIR.rglob("*.py"))],
                                    ("server", "bench"))
            print(f"working tree at {info['git_commit'][:12]}{' (dirty)' if info['git_dirty'] else ''}; "
                  f"{info['nproc']} CPUs ({info['cpu_model']}); sizes {args.sizes} MB, {args.runs} run(s)", flush=True)
            s3_port = free_port()
            moto = processes.start("moto", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(s3_port)])
            await wait_port(moto, s3_port, "moto did not start")
            endpoint = f"{HOST}:{s3_port}"
            envs = {
                "local": {"RIPPLE_STORAGE": "local", "RIPPLE_STORAGE_DIR": str(tmp / "ripple-local")},
                "s3": {"RIPPLE_STORAGE": "s3", "RIPPLE_S3_ENDPOINT": endpoint, "RIPPLE_S3_BUCKET": "ripple",
                       "RIPPLE_S3_ACCESS_KEY": KEYS[0], "RIPPLE_S3_SECRET_KEY": KEYS[1], "RIPPLE_S3_SECURE": "false"},
            }
            servers: dict[str, Any] = {}
            for backend, env in envs.items():
                port = free_port()
                clean = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}
                proc = processes.start(f"ripple-{backend}", [
                    sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--dir", str(APP_DIR),
                    "--database-url", args.database_url, "--db-schema", schemas[backend]],
                    env={**clean, **env, "PYTHONUNBUFFERED": "1"})
                await wait_ready(proc, port)
                servers[backend] = (proc, Ripple(port))
            floor_port = free_port()
            floor = processes.start("floor", [sys.executable, "-m", "uvicorn", "storage_floor:app", "--host", HOST,
                                              "--port", str(floor_port), "--loop", "uvloop", "--http", "httptools",
                                              "--log-level", "warning"], cwd=SCRIPT.parent)
            await wait_port(floor, floor_port, "the floor server did not start")
            baselines = {"local": FileCopy(tmp / "copies"), "s3": DirectS3(endpoint, "direct")}
            sources = {size: make_source(tmp, size) for size in sizes}
            transfers: list[dict[str, Any]] = []
            for run in range(1, args.runs + 1):
                for backend in ("local", "s3"):
                    for size in sizes:
                        repeat = args.repeat_small if size < 10 * MB else args.repeat_large
                        for rep in range(repeat):
                            trio: list[tuple[str, Any]] = [("ripple", servers[backend][1]),
                                                           ("baseline", baselines[backend]), ("floor", HttpFloor(floor_port))]
                            for path, mover in trio if rep % 2 == 0 else trio[::-1]:
                                up, ref = await asyncio.to_thread(mover.upload, sources[size], size)
                                down = await asyncio.to_thread(mover.download, ref, size)
                                await asyncio.to_thread(mover.remove, ref)
                                for direction, seconds in (("upload", up), ("download", down)):
                                    transfers.append({"run": run, "backend": backend, "size": size, "path": path,
                                                      "direction": direction, "seconds": seconds})
                    for row in summary([t for t in transfers if t["run"] == run and t["backend"] == backend]):
                        print(f"run {run} {backend:5} {row['size_mb']:6g} MB {row['direction']:8}  ripple "
                              f"{row['ripple']['median_mb_s']:8.1f} MB/s   baseline {row['baseline']['median_mb_s']:8.1f} "
                              f"MB/s   ratio {row['ratio']:.2f}   http floor {row['floor']['median_mb_s']:8.1f} MB/s",
                              flush=True)
            rows = summary(transfers)
            rss = {backend: peak_rss_mb(proc.pid) for backend, (proc, _) in servers.items()}
            print("\nall runs (median over every transfer; baseline: local = file copy / read, s3 = minio SDK direct)")
            print(f"{'backend':7} {'size':>7} {'direction':9} {'ripple MB/s':>12} {'baseline MB/s':>14} {'ratio':>6} "
                  f"{'floor MB/s':>11} {'/floor':>6}")
            for row in rows:
                print(f"{row['backend']:7} {row['size_mb']:5g} MB {row['direction']:9} {row['ripple']['median_mb_s']:12.1f} "
                      f"{row['baseline']['median_mb_s']:14.1f} {row['ratio']:6.2f} {row['floor']['median_mb_s']:11.1f} "
                      f"{row['ratio_to_floor']:6.2f}")
            print(f"server peak RSS (VmHWM): {', '.join(f'{k} {v} MB' for k, v in rss.items())}")
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            out = RESULTS_DIR / f"storage-{stamp}.json"
            out.write_text(json.dumps({
                "benchmark": "storage",
                "timestamp_utc": stamp,
                "machine": info,
                "settings": {"sizes_bytes": sizes, "runs": args.runs, "repeat_small": args.repeat_small,
                             "repeat_large": args.repeat_large, "block_bytes": BLOCK,
                             "note": "client, servers, moto and PostgreSQL on one (possibly shared) machine; files "
                                     "in the page cache; MB = 10^6 bytes"},
                "summary": rows,
                "server_peak_rss_mb": rss,
                "transfers": transfers,
            }, indent=2) + "\n")
            print(f"wrote {out.relative_to(ROOT)}")
        finally:
            processes.stop_all()
            for schema in schemas.values():
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100", help="file sizes in MB (10^6 bytes), comma-separated (default 1,100)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--repeat-small", type=int, default=20, help="transfers per run of files under 10 MB (default 20)")
    parser.add_argument("--repeat-large", type=int, default=3, help="transfers per run of larger files (default 3)")
    parser.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL URL (default {DEFAULT_DB})")
    args = parser.parse_args()
    run_cancellable(lambda: bench(args), "storage.py: interrupted")


if __name__ == "__main__":
    main()
