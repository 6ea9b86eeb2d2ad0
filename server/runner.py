"""Wiring a server process together: database, runtime, HTTP app, file watching."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette

from server import adminkey, codegen, devserver, loops, workers
from server.api.app import RippleApp, build_app
from server.api.uvicorn_frames import ws_implementation
from server.api.worker_group import WorkerGroup
from server.config import Config, connect_url
from server.core import sql, watchdog
from server.core.auth import dev_issuer
from server.core.database import Database
from server.core.env import EnvVarError, parse_env_file
from server.core.loader import App
from server.core.runtime import Runtime
from server.core.scheduler.loop import Scheduler
from server.core.search.text import compact_forever
from server.core.subscriptions import SubscriptionManager
from server.core.supervise import Supervised
from server.errors import RippleError
from server.stopping import StoppingServer

log = logging.getLogger("ripple")
BACKLOG = 2048
DEV_ENV_FILE = "dev.env"


def app_source_filter(app_dir: Path) -> Callable[[Any, str], bool]:
    """A watchfiles filter keeping `schema.py`, the `functions/` folder itself and `.py` files
    under it; everything else in the app directory (`.ripple/`, caches, data) is ignored."""
    root = app_dir.resolve()

    def keep(change: Any, path: str) -> bool:
        try:
            parts = Path(path).relative_to(root).parts
        except ValueError:
            return False
        if parts in (("schema.py",), ("functions",)):
            return True
        return (
            len(parts) >= 2 and parts[0] == "functions" and parts[-1].endswith(".py")
            and not any(p.startswith(".") or p == "__pycache__" for p in parts)
        )

    return keep


def describe_load_error(exc: BaseException) -> str:
    """One line for a failed load: Ripple's own errors (an import error with its file and line,
    a schema refused) say everything already; others get their type."""
    if isinstance(exc, RippleError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class AppLoader:
    """Loads the app in dev mode, at start and after every change, and keeps serving what it can.

    A version that loaded completely is replaced only by another complete one: a reload with an
    error keeps the previous version serving. At start there is no previous version, so the
    load goes module by module (see loader.load_app); while the version served is incomplete,
    so do reloads. When nothing can be served at all (schema.py fails, or applying the schema
    does), `error` says why; health checks and API calls report it until a change fixes it."""

    def __init__(self, runtime: Runtime, start_services: Callable[[], Awaitable[None]]) -> None:
        self.runtime = runtime
        self.error: str | None = None
        self._start_services = start_services

    async def load(self, changed: str | None = None) -> None:
        """Load at start (`changed` None) or after a change to the files named; never raises."""
        runtime = self.runtime
        previous = runtime.app if runtime.ready else None
        event = "loading the app" if changed is None else f"reload after change to {changed}"
        try:
            await runtime.load(partial=previous is None or bool(previous.load_errors))
        except Exception as exc:
            message = describe_load_error(exc)
            if previous is not None:
                log.error("%s failed; still serving the previous version: %s", event, message)
            else:
                self.error = message
                log.error("%s failed; nothing is served until a change fixes it: %s", event, message)
            return
        self.error = None
        app = runtime.app
        for file, error in app.load_errors.items():
            log.error("%s failed to load; its functions are not served until a change fixes it: %s", file, error)
        if changed is None:
            log.info("loaded %d functions from %s", app.registry.app_function_count, app.directory)
        else:
            log.info("reloaded after change to %s: %d functions", changed, app.registry.app_function_count)
        if self.runtime.config.codegen_dir is not None:
            self._codegen(app)
        try:
            await self._start_services()
        except Exception as exc:
            log.error("live queries or the scheduler did not start; a change to the app retries: %s",
                      describe_load_error(exc))

    def _codegen(self, app: App) -> None:
        """`ripple dev --codegen`: rewrite the TypeScript types; only from a complete load, so
        that a module failing to import does not take its functions out of the frontend's types."""
        out = self.runtime.config.codegen_dir
        assert out is not None
        if app.load_errors:
            log.error("codegen skipped: %s failed to load; %s is left as it was", ", ".join(app.load_errors), out)
            return
        try:
            written = codegen.write(app, out)
        except (RippleError, OSError) as exc:
            log.error("codegen into %s failed: %s", out, exc)
            return
        if written:
            log.info("codegen: wrote %s into %s", ", ".join(written), out)

    async def watch(self) -> None:
        """Reload whenever a .py file of the app changes. The app directory itself is watched
        (not `functions/` and `schema.py`), so that a folder or schema created after the start is
        picked up too."""
        from watchfiles import awatch

        app_dir = self.runtime.config.app_dir.resolve()
        async for changes in awatch(app_dir, watch_filter=app_source_filter(app_dir)):
            await self.load(", ".join(sorted({Path(p).name for _, p in changes})))


async def seed_dev_env(runtime: Runtime) -> None:
    """`ripple dev`: set each variable of the app's dev.env that the deployment does not have yet
    (never overwriting one), before any function runs, and say which by name. A file that does
    not parse is reported (file and line) and skipped whole: dev still starts, without it."""
    path = runtime.config.app_dir / DEV_ENV_FILE
    if not path.is_file():
        return
    try:
        wanted = parse_env_file(path.read_text(encoding="utf-8"), DEV_ENV_FILE)
    except (EnvVarError, OSError, UnicodeDecodeError) as exc:
        log.error("%s is skipped, nothing in it is set: %s", path, exc)
        return
    current = await runtime.refresh_env()
    missing = [change for change in wanted if change.name not in current]
    if not missing:
        if wanted:
            print(f"Environment: {DEV_ENV_FILE} sets nothing; already set: {', '.join(c.name for c in wanted)}", flush=True)
        return
    try:
        await runtime.update_env(missing)
    except EnvVarError as exc:  # over the deployment's limits
        log.error("%s is skipped, nothing in it is set: %s", path, exc)
        return
    print(f"Environment: set {', '.join(c.name for c in missing)} from {DEV_ENV_FILE}", flush=True)


def tune_gc() -> None:
    """Fewer cyclic-GC passes: the start-up heap (modules, schema, functions) is frozen out of
    collection, and the young generation is collected every 10,000 allocations instead of 700.
    Profiling a thousand-client fan-out showed a fifth of the server's time in gc_collect."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(10_000, gen1, gen2)


_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def create_server_app(config: Config, on_fatal: Callable[[str], None]) -> RippleApp:
    """An ASGI app whose lifespan connects to the database and loads the app. When start-up
    cannot go on (no database; in production, an app that does not load), it calls `on_fatal`
    with a one-line reason, which must stop the server."""
    assert config.database_url, "a database URL is required"
    db = Database(config.database_url, config.db_schema)
    runtime = Runtime(config, db)
    subscriptions = SubscriptionManager(runtime)
    scheduler = Scheduler(runtime)
    live_queries = scheduling = False
    # Removes the bytes of deleted files and abandoned uploads left behind (storage/files.py).
    sweeper = runtime.supervise("storage sweeper", runtime.files.sweep_forever)
    # Folds the full-text search statistics' delta rows together (search/text.py).
    folder = runtime.supervise(
        "search statistics", lambda: compact_forever(db.acquire, sql.lock_key(db.namespace, "search stats"))
    )

    seeded = False

    async def start_services() -> None:
        """Live queries, the scheduler and the storage sweeper, once a version of the app is
        loaded; in dev, first the variables of dev.env (scheduled functions may read them)."""
        nonlocal live_queries, scheduling, seeded
        if config.dev and not seeded:
            await seed_dev_env(runtime)
            seeded = True
        if not live_queries:
            await subscriptions.start()
            live_queries = True
        if config.scheduler.enabled and not scheduling:
            await scheduler.start()
            scheduling = True
        if sweeper.task is None:
            sweeper.start()
        if folder.task is None:
            folder.start()

    loader = AppLoader(runtime, start_services)
    group = WorkerGroup.from_env(runtime)  # a worker of `ripple serve --workers N`: one view of the group

    async def start() -> str | None:
        """Connect and load; the reason start-up must stop, if any."""
        try:
            await db.connect(min_size=config.pool_min, max_size=config.pool_max)
        except _DATABASE_ERRORS as exc:
            return f"cannot connect to the database: {describe_load_error(exc)}"
        if not config.admin_key:
            log.info("no admin key configured: environment variables, internal functions and admin endpoints are "
                        "refused; %s", adminkey.HOW_TO_CONFIGURE)
        if config.dev:
            await loader.load()
            return None
        try:
            await runtime.load()
            await start_services()
        except (RippleError, *_DATABASE_ERRORS) as exc:
            return f"the app in {config.app_dir} failed to load: {describe_load_error(exc)}"
        log.info("loaded %d functions from %s", runtime.app.registry.app_function_count, config.app_dir)
        return None

    def count_block(kind: str, seconds: float) -> None:
        runtime.metrics.inc("ripple_event_loop_blocks_total", kind=kind)
        runtime.metrics.inc("ripple_event_loop_blocked_seconds_total", seconds, kind=kind)

    # Interrupts functions that hold the event loop too long; logs every long block of it.
    dog = watchdog.Watchdog(config.blocked_loop_warning, config.blocking_limit or 1.0, count_block)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher: Supervised | None = None
        recorded = False
        try:
            failure = await start()
            if failure is not None:
                on_fatal(failure)
            else:
                if config.dev:
                    watcher = runtime.supervise("reload watcher", loader.watch)  # restarted if it dies
                    watcher.start()
                    devserver.record(config.app_dir, connect_url(config.host, config.port))
                    recorded = True
                    if (config.app_dir / "public" / "index.html").is_file():
                        print(f"App page: {config.base_url}/", flush=True)
                    print(f"Dashboard: {config.base_url}/_ripple/ (`ripple dashboard` opens it signed in)", flush=True)
                worker = os.environ.get(workers.WORKER_ENV)  # which of `ripple serve --workers N`, if one
                log.info("serving %s (%s mode, event loop %s%s)", listen_url(config),
                         "dev" if config.dev else "production", type(asyncio.get_running_loop()).__name__,
                         f", worker {worker} of {os.environ.get(workers.WORKERS_ENV, '?')}" if worker else "")
                if group is not None:
                    await group.start()
                if ready_file := os.environ.get(workers.READY_ENV):  # the supervisor waits for it
                    Path(ready_file).touch()  # noqa: ASYNC240 - a file created once, at start
                tune_gc()
            dog.start()  # after the start-up's own long steps (importing the app, tune_gc)
            yield
        finally:
            try:
                if recorded:
                    devserver.forget(config.app_dir)
                if group is not None:
                    await group.stop()
                if watcher is not None:
                    await watcher.stop()
                if scheduling:
                    await scheduler.stop()
                if live_queries:
                    await subscriptions.stop()
                await sweeper.stop()
                await folder.stop()
                await runtime.files.removals_done()
                await db.close()
            finally:
                dog.stop()  # last: functions still running (scheduled jobs finishing) stay guarded

    return build_app(runtime, subscriptions, lifespan=lifespan, load_error=lambda: loader.error, group=group)


def listen_url(config: Config) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket. Bound before anything else starts, so that a port in use
    fails at once (an OSError with errno EADDRINUSE), before anything claims to serve. A worker
    of `ripple serve --workers N` serves the socket its supervisor listens on (server/workers.py)."""
    if inherited := os.environ.get(workers.LISTEN_FD_ENV):
        return socket.socket(fileno=int(inherited))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)  # listening now: a second server cannot bind the port meanwhile
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(app: Any, config: Config) -> uvicorn.Config:
    """The uvicorn settings `serve` runs with (tests/test_uvicorn_frames.py runs them too)."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        backlog=BACKLOG,
        lifespan="on",
        log_level="warning",  # uvicorn logs every websocket open/close at info; ours says what matters
        access_log=False,
        # Ripple's own websocket protocol (server/api/ws_protocol.py), or uvicorn's sans-I/O one
        # with compression; the fan-out fast path writes through either (server/api/uvicorn_frames.py).
        ws=ws_implementation(config.ws_compression),
        # permessage-deflate costs a zlib pass per frame per client: with a thousand clients on
        # one query that dominates fan-out. Off unless asked for (slow links, large results).
        ws_per_message_deflate=config.ws_compression,
        http="httptools" if _installed("httptools") else "h11",
        # Ripple's own loops (server/loops.py): they refuse network I/O in queries and mutations.
        loop=loops.uvicorn_loop(event_loop(config)),
        timeout_graceful_shutdown=10,
    )


def event_loop(config: Config) -> str:
    """The loop `serve` runs on: the one configured, asyncio where uvloop is not installed."""
    return config.event_loop if config.event_loop != "uvloop" or _installed("uvloop") else "asyncio"


def serve(config: Config, sock: socket.socket) -> None:
    """Serve on `sock` (from `listen`) until stopped. A start-up that cannot go on exits with
    status 1 and its reason."""
    config.port = sock.getsockname()[1]  # --port 0 means any free port
    failures: list[str] = []

    def stop(reason: str) -> None:
        failures.append(reason)
        server.should_exit = True

    if config.dev:  # before the app loads: functions/auth_config.py may list it (docs/auth.md)
        os.environ[dev_issuer.ENV_VAR] = dev_issuer.issuer_url(config.base_url)
    app = create_server_app(config, on_fatal=stop)
    server = StoppingServer(uvicorn_config(app, config), app.runtime.log_stream.close)
    if config.dev:
        print(f"Ripple dev server: {listen_url(config)}  (app: {config.app_dir})", flush=True)
    server.run(sockets=[sock])
    if failures:
        raise SystemExit(f"ripple {'dev' if config.dev else 'serve'}: {failures[0]}")
    if not server.started:
        raise SystemExit(1)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
