"""Shared fixtures. Tests run against a real PostgreSQL (RIPPLE_TEST_DATABASE_URL, default the
machine's server at 127.0.0.1:5432, database `test`); every test gets its own PostgreSQL schema,
so tests never see each other's tables and can run against one database."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server.config import Config
from server.core.database import Database
from server.core.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
BASIC_APP = APPS / "basic"
PG_URL = os.environ.get("RIPPLE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_url() -> str:
    return PG_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema name; dropped with everything in it afterwards."""
    name = "t_" + secrets.token_hex(6)
    yield name
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def open_runtime(app_dir: Path, namespace: str, **config: Any) -> AsyncIterator[Runtime]:
    cfg = Config(app_dir=app_dir, database_url=PG_URL, db_schema=namespace, dev=config.pop("dev", True), **config)
    db = Database(PG_URL, namespace)
    await db.connect(min_size=1, max_size=config.get("pool_max", 20))
    runtime = Runtime(cfg, db)
    try:
        await runtime.load()
        yield runtime
    finally:
        await db.close()


@pytest.fixture
async def runtime(namespace: str) -> AsyncIterator[Runtime]:
    """The basic test app loaded in-process over a fresh schema."""
    async with open_runtime(BASIC_APP, namespace) as rt:
        yield rt


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/_ripple/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{log_path.read_text(errors='replace')}")


@pytest.fixture
def start_server(tmp_path: Path, namespace: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start `ripple <mode>` as a real process on a free loopback port."""
    started: list[ServerProcess] = []

    def start(mode: str = "serve", app_dir: Path = BASIC_APP, extra_env: dict[str, str] | None = None,
              args: list[str] | None = None, schema: str | None = None, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        log_path = tmp_path / f"server-{port}.log"
        env = {**os.environ, "DATABASE_URL": PG_URL, "RIPPLE_DB_SCHEMA": schema or namespace, **(extra_env or {})}
        cmd = [sys.executable, "-m", "server.cli", mode, "--port", str(port), "--dir", str(app_dir), *(args or [])]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
        started.append(server)
        wait_healthy(server.url, proc, log_path)
        return server

    yield start
    for server in started:
        server.stop()


async def call(client: httpx.AsyncClient, kind: str, path: str, args: Any = None, **body: Any) -> httpx.Response:
    return await client.post(f"/api/{kind}", json={"path": path, "args": args or {}, **body})
