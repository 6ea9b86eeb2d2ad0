"""Starting `python -m server.cli ...` servers by forking a process that has imported the server
already (a fork server), for the suite's many server starts.

A server exec'd from scratch spends most of its start importing Python modules (the server,
pydantic, uvicorn, asyncpg: about half a second, more on a busy CI machine), and the suite starts
well over a hundred. The fork server imports them once; each server is then a fork of it that runs
`server.cli` as `python -m server.cli` would (`runpy`, as `__main__`, with the given argv,
environment, working directory and output file), through the same start-up and shutdown code. The
child reseeds `random` (scheduler jitter and backoff must differ between servers, as exec'd ones'
do) and restores default signal dispositions.

`ForkServer.spawn` returns a `Forked`: the part of subprocess.Popen the tests use (pid,
returncode, poll, wait, terminate, kill, send_signal). The server is the fork server's child, not
the test's, so its exit status is collected by the fork server and asked for; a pidfd tells the
test when it has exited. Set RIPPLE_TEST_EXEC_SERVERS=1 to start every server by exec instead.

Run as a script, this file is the fork server: JSON requests on stdin, one JSON answer per line
on stdout; it ends when stdin closes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

PRELOAD = ("server.cli", "server.runner", "uvloop", "httptools", "watchfiles", "uvicorn.protocols.http.httptools_impl",
           "uvicorn.lifespan.on", "websockets.asyncio.server")


class ForkServerError(RuntimeError):
    """The fork server is gone or answered nonsense: the caller starts servers by exec instead."""


class ForkServer:
    """The test side: one fork server process per test session, shared by every thread."""

    def __init__(self, root: Path, log_path: Path) -> None:
        self.root, self.log_path = root, log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, __file__], cwd=str(root), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log)
        self._lock = threading.Lock()
        self.env = dict(os.environ)  # what the fork server started with
        self._ask({"op": "ready"})

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except OSError as exc:
                raise ForkServerError(f"fork server gone: {exc}") from exc
        if not line:
            raise ForkServerError(f"fork server exited with {self.proc.poll()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise ForkServerError(answer["error"])
        return answer

    def can_spawn(self, cmd: list[str], env: dict[str, str]) -> bool:
        """Only `python -m server.cli ...`, and only environments that agree with the fork
        server's on what the interpreter reads at its own start (PYTHON* variables)."""
        if self.proc.poll() is not None or cmd[:3] != [sys.executable, "-m", "server.cli"]:
            return False
        startup = {k for k in env.keys() | self.env.keys() if k.startswith("PYTHON")}
        return all(env.get(k) == self.env.get(k) for k in startup)

    def spawn(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> Forked:
        answer = self._ask({"op": "spawn", "argv": cmd[3:], "env": env, "cwd": str(cwd), "log": str(log_path)})
        return Forked(self, int(answer["pid"]))

    def status(self, pid: int, block: bool) -> int | None:
        code = self._ask({"op": "wait", "pid": pid, "block": block})["code"]
        return None if code is None else int(code)

    def close(self) -> None:
        """End the fork server (its stdin closes); servers it forked are the tests' to stop."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.log_path.stat().st_size == 0:  # kept only when the fork server had something to say
            self.log_path.unlink()


class Forked:
    """A forked server, as much of subprocess.Popen as the tests use."""

    def __init__(self, forks: ForkServer, pid: int) -> None:
        self.forks, self.pid = forks, pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)  # readable once the process has exited

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
            self._reap()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(["server.cli"], timeout or 0)
            self._reap()
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        self.returncode = self.forks.status(self.pid, block=True)  # exited: the wait is immediate
        os.close(self._pidfd)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# -- the fork server ------------------------------------------------------------------------------


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become `python -m server.cli <argv>`; ends in SystemExit."""
    import random
    import runpy
    import warnings

    random.seed()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a normal interpreter start
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Python ignores SIGPIPE (writes raise instead)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(devnull)
    sys.path[0] = os.getcwd()  # what `python -m` puts first
    sys.argv = ["server.cli", *request["argv"]]
    # server.cli is imported already (the point of the fork server); runpy says so on every start.
    warnings.filterwarnings("ignore", message="'server.cli' found in sys.modules", category=RuntimeWarning)
    runpy.run_module("server.cli", run_name="__main__", alter_sys=True)
    sys.exit(0)


class _BecomeServer(Exception):
    """Raised in a forked child to leave the request loop: the child then runs the server, and
    its exit (SystemExit, atexit handlers) is an ordinary interpreter exit."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request


def serve() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # optional (uvloop, httptools): the child imports or skips it as an exec'd server would
    if threading.active_count() != 1:
        raise SystemExit(f"fork server: importing started threads {threading.enumerate()}; cannot fork safely")
    try:
        for line in sys.stdin.buffer:
            request = json.loads(line)
            try:
                answer = _handle(request)
            except _BecomeServer:
                raise
            except Exception as exc:  # an answer for every request; the test side raises it
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    except _BecomeServer as child:
        _child(child.request)


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    if request["op"] == "ready":
        return {}
    if request["op"] == "spawn":
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            raise _BecomeServer(request)
        return {"pid": pid}
    if request["op"] == "wait":
        done, status = os.waitpid(request["pid"], 0 if request["block"] else os.WNOHANG)
        return {"code": os.waitstatus_to_exitcode(status) if done else None}
    raise ValueError(f"unknown request {request['op']!r}")


if __name__ == "__main__":
    serve()
