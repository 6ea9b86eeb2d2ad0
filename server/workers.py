"""`ripple serve --workers N`: N full Ripple processes on one machine behind one port.

A supervisor (this module, in the `ripple serve` process) starts N workers, each an ordinary
`ripple serve` of the same app with the same settings: its own subscriptions, its own share of
the scheduler, its own connection pool. Nothing is shared in memory; they meet in PostgreSQL, as
processes on separate machines do (docs/operations.md, Scaling out).

The supervisor binds and listens on the port, and every worker serves that one inherited socket
(RIPPLE_LISTEN_FD): the kernel keeps one queue of new connections, and whichever worker accepts
first takes the next. Why not SO_REUSEPORT, a socket per worker with the kernel hashing
connections over them (which splits long-lived websocket clients more evenly)? Because a worker
that stops closes its socket, and the connections the kernel had already queued on it are reset:
a rolling restart would drop requests unless every machine set net.ipv4.tcp_migrate_req. With
one shared queue, a stopping worker only stops accepting, and the others take what is queued, so
a restart loses nothing. The cost is a less even split of connections (measured in
docs/operations.md, Workers).

The supervisor forwards SIGTERM and SIGINT to every worker (each stops gracefully: requests in
flight finish, websockets are closed, so clients reconnect to the others or after a restart) and
exits when they have. SIGHUP restarts the workers one at a time, each replacement serving before
the worker it replaces is told to stop, so the port never goes unserved: a new version of the
app is picked up without downtime. A worker that dies is started again after a delay that grows
while it keeps dying; one that cannot start at all at the group's start (no database, a broken
app) stops the group with its status.

A worker tells the supervisor it serves by creating the file named in RIPPLE_WORKER_READY_FILE,
and serves the socket RIPPLE_LISTEN_FD names instead of binding one (server/runner.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

READY_ENV = "RIPPLE_WORKER_READY_FILE"
LISTEN_FD_ENV = "RIPPLE_LISTEN_FD"
WORKER_ENV = "RIPPLE_WORKER"  # the worker's number, 1..N (its log lines can say which)
WORKERS_ENV = "RIPPLE_WORKER_COUNT"  # N, for /_ripple/health
WORKERS_DIR_ENV = "RIPPLE_WORKERS_DIR"  # the supervisor's private folder: workers' sockets for each other (api/worker_group.py)
START_TIMEOUT = 120.0  # a worker not serving after this long has failed to start
STOP_TIMEOUT = 20.0  # uvicorn's graceful shutdown is 10 s; then the lifespan's own stop
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
POLL = 0.05


MIN_POOL_SHARE = 5  # connections each worker may open at least, however many share the default pool


def core_count() -> int:
    """The cores this process may run on: `ripple serve`'s default number of workers."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool_share(pool_max: int, workers: int) -> int:
    """Each worker's connection pool when RIPPLE_POOL_MAX is not set: the default pool split
    between the workers, so that a group on a many-core machine does not open N times as many
    connections as one process (PostgreSQL's default limit is 100)."""
    return max(MIN_POOL_SHARE, -(-pool_max // workers))


@dataclass
class Worker:
    number: int
    proc: subprocess.Popen[bytes]
    ready_file: Path
    started: float = field(default_factory=time.monotonic)
    ready: bool = False

    def check_ready(self) -> bool:
        if not self.ready and self.ready_file.exists():
            self.ready = True
        return self.ready


class Supervisor:
    """Runs `command` (argv of one worker) N times, each serving `sock`."""

    def __init__(self, command: list[str], workers: int, sock: socket.socket, log: object = sys.stderr) -> None:
        self.command, self.count, self.sock = command, workers, sock
        self.port = sock.getsockname()[1]
        self.workers: dict[int, Worker] = {}
        self.stopping: int | None = None  # the signal that asked the group to stop
        self.reload = False
        self.deaths: dict[int, int] = {}  # worker number -> deaths in a row, for the restart delay
        self.log = log
        self.folder = Path(tempfile.mkdtemp(prefix="ripple-workers-"))

    def say(self, text: str) -> None:
        print(f"ripple serve: {text}", file=self.log, flush=True)  # type: ignore[call-overload]

    def spawn(self, number: int) -> Worker:
        ready = self.folder / f"ready-{number}-{time.monotonic_ns()}"
        env = {**os.environ, READY_ENV: str(ready), LISTEN_FD_ENV: str(self.sock.fileno()), WORKER_ENV: str(number),
               WORKERS_ENV: str(self.count), WORKERS_DIR_ENV: str(self.folder),
               # libuv (uvloop) accepts one connection per turn of the loop, not all that are queued,
               # so that a burst of connections is shared with the other workers.
               "UV_TCP_SINGLE_ACCEPT": "1"}
        proc = subprocess.Popen([*self.command, "--port", str(self.port), "--workers", "1"], env=env,
                                pass_fds=(self.sock.fileno(),))
        return Worker(number, proc, ready)

    def run(self) -> int:
        """Serve until stopped; the exit status of the group."""
        previous = {sig: signal.signal(sig, self._signalled) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            # The first worker alone first: it sets up the schema while nothing races it, and an app
            # that cannot start (no database, a broken module) says why once, in one paragraph.
            self.workers[1] = self.spawn(1)
            failed = self._wait_ready([self.workers[1]])
            if failed is None and self.stopping is None:
                for number in range(2, self.count + 1):
                    self.workers[number] = self.spawn(number)
                failed = self._wait_ready(list(self.workers.values()))
            if failed is not None:
                if len(self.workers) > 1:  # (the first one's own last line says why)
                    self.say(f"worker {failed.number} did not start (status {failed.proc.returncode}); stopping the others")
                self._stop_all(signal.SIGTERM)
                return 1
            self.say(f"{self.count} workers serving on port {self.port} (pids "
                     f"{', '.join(str(w.proc.pid) for w in self.workers.values())})")
            while self.stopping is None:
                if self.reload:
                    self.reload = False
                    self._rolling_restart()
                self._replace_dead()
                time.sleep(POLL)
            self._stop_all(signal.SIGTERM)
            return 128 + self.stopping
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for leftover in self.folder.iterdir():
                leftover.unlink(missing_ok=True)
            self.folder.rmdir()

    def _signalled(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stopping = signum

    def _wait_ready(self, workers: list[Worker]) -> Worker | None:
        """Wait until every worker serves; the first that exited instead (or did not start in
        time), or None."""
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.check_ready() for w in workers):
            for w in workers:
                if not w.ready and (w.proc.poll() is not None or time.monotonic() > deadline):
                    return w
            if self.stopping is not None:
                return None
            time.sleep(POLL)
        return None

    def _replace_dead(self) -> None:
        for number, worker in list(self.workers.items()):
            status = worker.proc.poll()
            if status is None:
                continue
            deaths = self.deaths[number] = self.deaths.get(number, 0) + 1 if time.monotonic() - worker.started < 60 else 1
            delay = RESTART_DELAYS[min(deaths, len(RESTART_DELAYS)) - 1]
            self.say(f"worker {number} (pid {worker.proc.pid}) exited with status {status}; starting it again in {delay:g} s")
            (self.folder / f"worker-{number}-{worker.proc.pid}.sock").unlink(missing_ok=True)  # killed: left behind
            until = time.monotonic() + delay
            while time.monotonic() < until and self.stopping is None:
                time.sleep(POLL)
            if self.stopping is None:
                self.workers[number] = self.spawn(number)

    def _rolling_restart(self) -> None:
        """SIGHUP: each worker replaced in turn, the replacement serving before the old one stops."""
        self.say("restarting the workers one at a time (SIGHUP)")
        for number, old in list(self.workers.items()):
            new = self.spawn(number)
            if self._wait_ready([new]) is not None or self.stopping is not None:
                self.say(f"the new worker {number} did not start (status {new.proc.poll()}); keeping the old one")
                self._stop([new], signal.SIGTERM)
                return
            self.workers[number] = new
            self._stop([old], signal.SIGTERM)
        self.say("all workers restarted")

    def _stop_all(self, signum: int) -> None:
        self._stop(list(self.workers.values()), signum)

    def _stop(self, workers: list[Worker], signum: int) -> None:
        """Ask each to stop, then wait for all (their graceful shutdowns overlap); kill stragglers."""
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signum)
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"worker {w.number} (pid {w.proc.pid}) did not stop within {STOP_TIMEOUT:g} s; killing it")
                w.proc.kill()
                w.proc.wait()
