"""`ripple serve --workers N` (server/workers.py): N real worker processes behind one port, their
supervisor's restarts and shutdown; and separate servers on one database (the scale-out path)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from client_sdk import RippleClient

from conftest import BASIC_APP, ROOT, ServerProcess, free_port, launch, wait_for

pytestmark = pytest.mark.e2e
StartServer = Callable[..., ServerProcess]


def health(url: str) -> dict[str, object]:
    """One request on a connection of its own, so the kernel may hand it to any worker."""
    with httpx.Client() as client:
        answer: dict[str, object] = client.get(f"{url}/_ripple/health", timeout=30).json()
        return answer


def workers_seen(url: str, tries: int = 60) -> set[object]:
    return {health(url).get("worker") for _ in range(tries)}


def group(pg_url: str, namespace: str, tmp_path: Path, workers: int = 2, env: dict[str, str] | None = None) -> ServerProcess:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": pg_url, "RIPPLE_DB_SCHEMA": namespace, **(env or {})}
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--dir", str(BASIC_APP),
           "--workers", str(workers)]
    server = launch(cmd, port, tmp_path / "group.log", env)
    # launch returns once one worker answers; the group says when all of them serve
    deadline = time.monotonic() + 60
    while f"{workers} workers serving" not in server.log():
        assert server.proc.poll() is None and time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    return server


def websocket_clients(url: str) -> dict[int, float]:
    """Connected websocket clients by worker, from each worker's metrics (fresh connections until
    both answered)."""
    seen: dict[int, float] = {}
    for _ in range(60):
        with httpx.Client() as client:
            samples = dict(line.rsplit(" ", 1) for line in client.get(f"{url}/_ripple/metrics?scope=worker").text.splitlines()
                           if line and not line.startswith("#"))
        seen[int(float(samples["ripple_worker"]))] = float(samples["ripple_websocket_clients"])
        if len(seen) == 2:
            break
    return seen


def pids_of_workers(server: ServerProcess) -> set[int]:
    line = next(line for line in reversed(server.log().splitlines()) if "workers serving" in line)
    return {int(p) for p in line.split("(pids ")[1].rstrip(")").split(", ")}


def test_workers_share_the_port_and_a_write_reaches_subscribers_on_every_worker(
        pg_url: str, namespace: str, tmp_path: Path) -> None:
    server = group(pg_url, namespace, tmp_path)
    try:
        assert workers_seen(server.url) == {1, 2}  # the kernel spreads new connections over both

        async def scenario() -> None:
            # Clients on connections of their own until each worker holds at least one.
            clients: list[RippleClient] = []
            async with asyncio.timeout(60):
                while len(clients) < 64 and min(websocket_clients(server.url).values(), default=0) < 1:
                    client = RippleClient(server.url)
                    client.start()
                    await client.wait_connected()
                    clients.append(client)
                assert set(websocket_clients(server.url)) == {1, 2} and min(websocket_clients(server.url).values()) >= 1
                subscriptions = [c.subscribe("counters:get", {"name": "workers"}) for c in clients]
                assert {await s.__anext__() for s in subscriptions} == {0}
                async with httpx.AsyncClient() as http:
                    await http.post(f"{server.url}/api/mutation", json={"path": "counters:inc", "args": {"name": "workers"}})
                assert [await s.__anext__() for s in subscriptions] == [1] * len(clients)
            for client in clients:
                await client.close()

        asyncio.run(scenario())
    finally:
        server.stop()
    assert server.proc.poll() is not None


KEY = "workers-admin-key"


def pinned_clients(url: str) -> dict[int, httpx.Client]:
    """One keep-alive connection to each worker: new connections until both answered health."""
    pinned: dict[int, httpx.Client] = {}
    for _ in range(60):
        client = httpx.Client(base_url=url, headers={"Authorization": f"Convex {KEY}"}, timeout=60,
                              limits=httpx.Limits(max_connections=1))
        number = int(client.get("/_ripple/health").json()["worker"])
        if number in pinned:
            client.close()
        else:
            pinned[number] = client
        if len(pinned) == 2:
            return pinned
    raise AssertionError(f"no connection reached both workers: {sorted(pinned)}")


def series(text: str, name: str) -> float:
    """The sum of a metric's series in an exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def test_the_log_stream_and_metrics_of_a_group_cover_every_worker(pg_url: str, namespace: str, tmp_path: Path) -> None:
    server = group(pg_url, namespace, tmp_path, env={"RIPPLE_ADMIN_KEY": KEY})
    pinned = pinned_clients(server.url)
    try:
        for number, client in pinned.items():
            answer = client.post("/api/mutation", json={"path": "counters:inc", "args": {"name": f"via-{number}"}})
            assert answer.json()["status"] == "success"
        page = pinned[1].get("/_ripple/logs", params={"cursor": "0", "timeout": "0"}).json()
        mine = {(e["worker"], e["function"]) for e in page["entries"] if e["kind"] == "mutation"}
        assert mine == {(1, "counters:inc"), (2, "counters:inc")}
        stamps = [e["timestamp"] for e in page["entries"]]
        assert stamps == sorted(stamps)
        again = pinned[2].get("/_ripple/logs", params={"cursor": page["cursor"], "timeout": "0"}).json()
        assert again["entries"] == [] and again["cursor"] == page["cursor"]  # the cursor is good on any worker

        # A long poll through worker 1 answers with what worker 2 records.
        polled: list[dict[str, object]] = []
        poll = threading.Thread(target=lambda: polled.append(pinned[1].get(
            "/_ripple/logs", params={"cursor": page["cursor"], "timeout": "30"}).json()))
        started = time.monotonic()
        poll.start()
        # It waits on both workers' streams: each counts it, and the group's gauge is the largest.
        # (Watched through connections of their own: pinned[1]'s one connection carries the poll.)
        watch = pinned_clients(server.url)
        try:
            wait_for(lambda: [series(c.get("/_ripple/metrics", params={"scope": "worker"}).text, "ripple_log_readers")
                              for c in watch.values()] == [1, 1])
            assert series(watch[1].get("/_ripple/metrics").text, "ripple_log_readers") == 1
        finally:
            for client in watch.values():
                client.close()
        pinned[2].post("/api/mutation", json={"path": "counters:inc", "args": {"name": "during-the-poll"}})
        poll.join(40)
        assert polled and time.monotonic() - started < 25, "the poll did not answer with the other worker's entry"
        entries = polled[0]["entries"]
        assert isinstance(entries, list) and [(e["worker"], e["function"]) for e in entries] == [(2, "counters:inc")]

        # Metrics: the group's sum, each worker's own with ?scope=worker.
        own = {n: c.get("/_ripple/metrics", params={"scope": "worker"}).text for n, c in pinned.items()}
        whole = pinned[1].get("/_ripple/metrics").text
        assert series(whole, "ripple_workers_answering") == 2 and "ripple_worker " not in whole
        assert series(own[1], "ripple_mutations_total") >= 1 and series(own[2], "ripple_mutations_total") >= 2
        assert series(whole, "ripple_mutations_total") == series(own[1], "ripple_mutations_total") + series(
            own[2], "ripple_mutations_total")
        assert pinned[1].get("/_ripple/health").json()["workers"] == 2

        # A worker killed: the group's answers leave it out, neither failing nor hanging.
        pids = pids_of_workers(server)
        second = next(int(path.name.split("-")[2].split(".")[0]) for path in Path(tempfile.gettempdir()).glob(
            "ripple-workers-*/worker-2-*.sock") if int(path.name.split("-")[2].split(".")[0]) in pids)
        os.kill(second, signal.SIGKILL)
        alone = pinned[1].get("/_ripple/logs", params={"cursor": "0", "timeout": "0"})
        assert alone.status_code == 200 and {e["worker"] for e in alone.json()["entries"]} == {1}
        assert series(pinned[1].get("/_ripple/metrics").text, "ripple_workers_answering") == 1
        bad = pinned[1].get("/_ripple/logs", params={"cursor": "12.x", "timeout": "0"})
        assert bad.status_code == 400 and "cursor" in bad.json()["message"]
    finally:
        for client in pinned.values():
            client.close()
        server.stop()


def test_sighup_restarts_the_workers_one_at_a_time_without_a_refused_request(
        pg_url: str, namespace: str, tmp_path: Path) -> None:
    server = group(pg_url, namespace, tmp_path)
    try:
        before = pids_of_workers(server)
        statuses: list[int] = []
        done = threading.Event()

        def hammer() -> None:
            while not done.is_set():
                try:
                    statuses.append(httpx.get(f"{server.url}/_ripple/health", timeout=30).status_code)
                except httpx.HTTPError as exc:  # a refused or reset connection counts as a failure
                    statuses.append(-1)
                    print("request failed:", exc)

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            os.kill(server.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 60
            while "all workers restarted" not in server.log():
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
        finally:
            done.set()
            thread.join()
        assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, failures: {statuses.count(-1)}"
        after = {int(p) for p in subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                                                text=True).stdout.split()}
        assert len(after) == 2 and not after & before
    finally:
        server.stop()


def test_a_dead_worker_is_replaced_and_sigterm_stops_the_group(pg_url: str, namespace: str, tmp_path: Path) -> None:
    server = group(pg_url, namespace, tmp_path)
    victim = sorted(pids_of_workers(server))[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "starting it again" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert health(server.url)["status"] == "ok"  # the other worker serves meanwhile
    while workers_seen(server.url, 20) != {1, 2}:  # and the replacement joins it
        assert time.monotonic() < deadline + 30, server.log()
    children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
    server.proc.terminate()
    assert server.proc.wait(30) == 128 + signal.SIGTERM
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def test_a_group_whose_workers_cannot_start_exits_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
    broken = tmp_path / "app"
    (broken / "functions").mkdir(parents=True)
    (broken / "schema.py").write_text("raise RuntimeError('no schema today')\n")
    done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--port", "0", "--dir", str(broken),
                           "--workers", "2", "--database-url", "postgresql://nobody@127.0.0.1:1/none"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    # The first worker starts alone and says why it cannot, once, as its last line; no other started.
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("ripple serve: cannot connect to the database"), done.stderr
    assert sum("cannot connect" in line for line in lines) == 1 and "did not start" not in done.stderr
    bad = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--workers", "0", "--database-url", "postgresql://x/y"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--workers must be at least 1" in bad.stderr


async def test_servers_on_separate_ports_are_one_deployment(start_server: StartServer) -> None:
    """The scale-out path: processes on other machines (here: other ports) against one database.
    A subscriber on one sees a write made through the other (scheduled jobs shared by several
    processes: tests/test_scheduler.py)."""
    first, second = start_server("serve"), start_server("serve")
    async with asyncio.timeout(60), RippleClient(first.url) as subscriber, RippleClient(second.url) as writer:
        updates = subscriber.subscribe("counters:get", {"name": "apart"})
        assert await updates.__anext__() == 0
        assert await writer.mutation("counters:inc", {"name": "apart"}) == 1
        assert await updates.__anext__() == 1
