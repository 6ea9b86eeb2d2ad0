"""Helpers shared by the benchmark scripts (bench/fanout.py, bench/http_api.py, bench/scheduler.py,
bench/abuse.py).

Not a benchmark itself: subprocesses with their logs, loopback HTTP, CPU accounting from /proc,
the description of the machine and code a run measured, percentiles, and running a benchmark so
that Ctrl-C and SIGTERM still clean up. The scripts run as `python bench/<name>.py`, which puts
bench/ on sys.path, so they import it as `common`. Standard library only: the load-generator and
worker subprocesses the scripts start import it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

COMMON = Path(__file__).resolve()
ROOT = COMMON.parent.parent
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"
HOST = "127.0.0.1"

# A `ripple serve` a script starts is ONE process unless the script asks for workers (`--workers`,
# bench/workers.py): its figures, PIDs, RSS and CPU are one process's. `ripple serve` defaults to a
# worker per core (docs/operations.md#workers); trees older than that ignore the variable.
os.environ.setdefault("RIPPLE_WORKERS", "1")


# ---------------------------------------------------------------------------------------------
# Subprocesses, loopback HTTP
# ---------------------------------------------------------------------------------------------

class Processes:
    """Every subprocess a script starts, each in its own session with its output in a temporary
    log file (`proc.log_path`); `stop_all` ends them (by pid, in reverse order)."""

    def __init__(self, prefix: str, pids: set[int] | None = None) -> None:
        self.prefix = prefix  # of the log files' names
        self.pids = pids  # when given, every pid started is added to it
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        if env is not None:
            env = {"RIPPLE_WORKERS": "1", **env}  # also where a script cleared RIPPLE_* (see above)
        fd, log_name = tempfile.mkstemp(prefix=f"{self.prefix}-{name}-", suffix=".log")
        with os.fdopen(fd, "wb") as log_file:
            # Own session: a Ctrl-C in the terminal reaches only the script, which stops them.
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    start_new_session=True)
        proc.log_path = Path(log_name)  # type: ignore[attr-defined]
        self.procs.append(proc)
        if self.pids is not None:
            self.pids.add(proc.pid)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], keep_log: bool = False, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not keep_log:
            with contextlib.suppress(OSError):
                proc.log_path.unlink()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)
        self.procs.clear()


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_call(port: int, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str = "/_ripple/health",
                     timeout: float = 60.0) -> None:
    """Wait until `GET path` answers 200; fail with the log's tail if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before it was ready:\n{tail(proc.log_path)}")  # type: ignore[attr-defined]
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = await asyncio.to_thread(http_call, port, "GET", path, None, 2)
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"not ready after {timeout} s:\n{tail(proc.log_path)}")  # type: ignore[attr-defined]


async def wait_port(proc: subprocess.Popen[bytes], port: int, what: str, timeout: float = 30.0) -> None:
    """Wait until `port` accepts TCP connections; else fail with `what` and the log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection((HOST, port), timeout=1).close()
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what}:\n{tail(proc.log_path)}")  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc
# ---------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime + stime ticks) for every process on the machine."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            head, _, rest = raw.rpartition(b")")
            fields = rest.split()
            out[int(entry)] = (head.partition(b"(")[2].decode(errors="replace"), int(fields[11]) + int(fields[12]))
    return out


def group_pids(root: int) -> set[int]:
    """`root` and every process descending from it (a `ripple serve --workers N` supervisor's workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{entry}/stat").read_bytes()
                parents[int(entry)] = int(raw.rpartition(b")")[2].split()[1])
    group, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in group and pid not in group:
                group.add(pid)
                grew = True
    return group


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def local_tcp_ports(pids: list[int]) -> set[int]:
    """Local ports of the TCP sockets the processes `pids` hold open."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if int(parts[9]) in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


# ---------------------------------------------------------------------------------------------
# Machine and code information
# ---------------------------------------------------------------------------------------------

def command_output(argv: list[str], cwd: Path = ROOT) -> str:
    """A command's stripped stdout; "" when it cannot run or takes longer than 10 s."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model(fallback: str = "") -> str:
    """The CPU's model name from /proc/cpuinfo ("" without that file, `fallback` without the line)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return fallback


def code_digest(paths: Iterable[Path]) -> str:
    """sha256 over the files `paths` (absolute, inside the repository) and this module: identifies
    the code measured even when the working tree differs from the commit."""
    h = hashlib.sha256()
    for path in sorted({*paths, COMMON}):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def describe_machine(pg_version: str, packages: Sequence[str], code_paths: Iterable[Path],
                     git_status_args: Sequence[str] = ()) -> dict[str, Any]:
    """The git commit, whether `git status --porcelain *git_status_args` lists changes, the
    `code_digest` of `code_paths`, CPUs, kernel, Python, PostgreSQL and the installed versions of
    `packages` (None when missing)."""
    from importlib.metadata import version

    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except Exception:
            versions[name] = None
    return {
        "git_commit": command_output(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(command_output(["git", "status", "--porcelain", *git_status_args])),
        "code_sha256": code_digest(code_paths),
        "nproc": command_output(["nproc"]) or str(os.cpu_count()),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "packages": versions,
    }


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when it is empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


# ---------------------------------------------------------------------------------------------
# Running a benchmark
# ---------------------------------------------------------------------------------------------

def run_cancellable(main: Callable[[], Awaitable[None]], interrupted: str,
                    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """Run `main()` on a new event loop; SIGTERM cancels it as Ctrl-C does, so its `finally`
    blocks stop the processes and drop the schemas. Then print `interrupted` and exit 130."""

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main()

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\n{interrupted}", file=sys.stderr)
        sys.exit(130)


class NodeClients:
    """One Node load-generator process (`script` with its JSON `config` as argument) that
    reports JSON lines `{"event": ...}` on stdout and takes commands on stdin, one per line;
    "close" makes it close its sockets, say "closed" and exit (bench/fanout_clients.mjs,
    bench/memory_clients.mjs). Its stderr goes to a temporary file, shown when it dies."""

    def __init__(self, script: Path, config: dict[str, Any], *, log_prefix: str, limit: int = 1 << 16) -> None:
        self.script, self.config, self.limit = script, config, limit
        self.proc: asyncio.subprocess.Process | None = None
        fd, name = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
        self.stderr_path = Path(name)
        self._stderr = os.fdopen(fd, "wb")

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(self.script), json.dumps(self.config), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=self._stderr, cwd=self.script.parent, start_new_session=True,
            limit=self.limit)

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next message of `event` (others are skipped); raises on an "error" message, on
        the process's exit and after `timeout` seconds."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"Node clients: no '{event}' within {timeout:.0f} s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                await self.proc.wait()
                raise RuntimeError(f"Node clients exited ({self.proc.returncode}) before '{event}':\n{tail(self.stderr_path)}")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == "error":
                raise RuntimeError(f"Node clients failed: {message.get('message')}")
            if message.get("event") == event:
                return message

    def send(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.send("close")
                await self.expect("closed", 30)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
            if self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        self._stderr.close()
        with contextlib.suppress(OSError):
            self.stderr_path.unlink()
