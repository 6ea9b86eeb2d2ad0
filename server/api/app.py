"""The Starlette application: HTTP API, operations endpoints, CORS, error hygiene."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.cached_responses import CachedResponses
from server.api.dev_auth import dev_auth_routes
from server.api.env_http import EnvRoutes
from server.api.http_actions import HttpActions
from server.api.http_api import HttpApi, error_response, json_response, not_ready
from server.api.logs_http import LogRoutes
from server.api.snapshot_http import SnapshotRoutes
from server.api.static_files import DashboardFiles, SdkFiles, StaticFiles
from server.api.storage_http import StorageRoutes
from server.api.sync_ws import Connections, serve_sync
from server.api.worker_group import WorkerGroup
from server.core import log_stream
from server.core.http_router import RESERVED_PREFIXES
from server.core.runtime import Runtime
from server.core.subscriptions import SubscriptionManager
from server.errors import redact
from server.workers import WORKER_ENV, WORKERS_ENV

log = logging.getLogger("ripple.app")
Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


ALLOW_METHODS = b"GET, POST, OPTIONS"
DEFAULT_ALLOW_HEADERS = b"authorization, content-type, convex-client"
PREFLIGHT_MAX_AGE = b"86400"
# What a page may read of a response besides the simple headers: a stored file's ETag and the
# parts of a ranged download (docs/storage.md).
EXPOSE_HEADERS = (b"access-control-expose-headers", b"ETag, Content-Range, Accept-Ranges, Content-Length, Digest")


class CorsMiddleware:
    """CORS for clients that authenticate with bearer tokens: Ripple reads no cookies, so it never
    sends Access-Control-Allow-Credentials. Without an allow-list every response says
    `Access-Control-Allow-Origin: *`; with one (`Config.cors_origins`), a listed origin is
    reflected, and other origins get no CORS headers (`Vary: Origin` on every response, since
    the answer depends on it). Preflights are answered here. Without an allow-list, a request
    with no Origin header (not from a browser page: curl, SDKs, servers) passes through untouched,
    as before: the wildcard would tell it nothing, and wrapping every response costs time."""

    def __init__(self, app: ASGIApp, allowed_origins: Collection[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(origin.encode("latin-1") for origin in allowed_origins)  # empty: any

    def headers_for(self, origin: bytes | None) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers for a request from `origin`; None for an origin not allowed."""
        if not self.allowed:
            return [(b"access-control-allow-origin", b"*"), EXPOSE_HEADERS]
        if origin is not None and origin in self.allowed:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin"), EXPOSE_HEADERS]
        return None

    def added_headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]] | None:
        """The headers a response (not a preflight's) to a request from `origin` gets; None: the
        request passes through untouched (no Origin, no allow-list)."""
        if origin is None and not self.allowed:
            return None
        cors = self.headers_for(origin)
        return cors if cors is not None else [(b"vary", b"Origin")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        added = self.added_headers(origin)
        if added is None:
            await self.app(scope, receive, send)
            return
        if origin is not None and scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await self.preflight(self.headers_for(origin), headers.get(b"access-control-request-headers"), send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    async def preflight(cors: list[tuple[bytes, bytes]] | None, requested_headers: bytes | None, send: Send) -> None:
        if cors is None:
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"vary", b"Origin")]})
            await send({"type": "http.response.body", "body": b"origin not allowed (RIPPLE_CORS_ORIGINS)"})
            return
        await send({
            "type": "http.response.start",
            "status": 204,
            "headers": [*cors, (b"access-control-allow-methods", ALLOW_METHODS),
                        (b"access-control-allow-headers", requested_headers or DEFAULT_ALLOW_HEADERS),
                        (b"access-control-max-age", PREFLIGHT_MAX_AGE)],
        })
        await send({"type": "http.response.body", "body": b""})


def build_app(
    runtime: Runtime, subscriptions: SubscriptionManager | None = None, lifespan: Lifespan | None = None,
    load_error: Callable[[], str | None] = lambda: None, group: WorkerGroup | None = None,
) -> RippleApp:
    """`load_error`: why no version of the app is loaded, when loading failed (dev mode keeps
    serving and reports it here until a change fixes it). `group`: this worker's group of
    `ripple serve --workers N`, whose logs and metrics the admin endpoints show."""
    api = HttpApi(runtime)
    storage = StorageRoutes(runtime)
    env = EnvRoutes(runtime)
    snapshots = SnapshotRoutes(runtime)
    dashboard = DashboardFiles()
    logs = LogRoutes(runtime, group)
    subscriptions = subscriptions or SubscriptionManager(runtime)
    websocket_clients: set[Any] = Connections(runtime.config.ws_ping_seconds)  # (and their keep-alive Pings)
    runtime.metrics.gauge("ripple_subscriptions", lambda: float(subscriptions.subscription_count))
    runtime.metrics.gauge("ripple_shared_queries", lambda: float(len(subscriptions.queries)))
    runtime.metrics.gauge("ripple_websocket_clients", lambda: float(len(websocket_clients)))
    worker_number = float(os.environ.get(WORKER_ENV) or 0)
    runtime.metrics.gauge("ripple_worker", lambda: worker_number)
    runtime.metrics.gauge("ripple_websocket_outbox_bytes", lambda: float(sum(c.outbox.bytes for c in websocket_clients)))
    runtime.metrics.gauge("ripple_websocket_pending_mutations", lambda: float(sum(len(c.mutations) for c in websocket_clients)))
    runtime.metrics.gauge("ripple_websocket_actions", lambda: float(sum(len(c.actions or ()) for c in websocket_clients)))
    runtime.metrics.gauge("ripple_live_query_ts", lambda: float(subscriptions.current_ts))
    runtime.metrics.gauge("ripple_live_queries_pending", lambda: float(len(subscriptions.stale)))

    def endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            if not runtime.ready:
                return not_ready(runtime, load_error())
            try:
                response = await handler(request)
            except Exception as exc:  # never leak internals; keep serving
                message = redact(exc, f"{request.method} {request.url.path}", dev=runtime.config.dev)
                response = error_response(500, "InternalServerError", message)
            runtime.metrics.inc("ripple_http_requests_total", route=request.url.path.split("/")[2] if request.url.path.startswith("/api/") else "other", status=str(response.status_code))
            return response

        return wrapped

    async def call_query(request: Request) -> Response:
        return await api.run(request, "query")

    async def call_mutation(request: Request) -> Response:
        return await api.run(request, "mutation")

    async def call_action(request: Request) -> Response:
        return await api.run(request, "action")

    async def call_any(request: Request) -> Response:
        return await api.run(request, None)

    async def call_run(request: Request) -> Response:
        ident = request.path_params["ident"].strip("/")
        module, _, name = ident.rpartition("/")
        return await api.run(request, None, path_override=f"{module}:{name}" if module else ident)

    async def call_query_at_ts(request: Request) -> Response:
        return await api.run(request, "query", at_ts=True)

    async def health(request: Request) -> Response:
        if not runtime.ready:
            error = load_error()
            if error is not None:
                return json_response({"status": "load failed", "error": error}, 503)
            return json_response({"status": "starting"}, 503)
        down = sorted(loop.name for loop in runtime.loops if not loop.alive)
        if down:  # a background loop failed and waits to restart (logged at ERROR): not healthy
            return json_response({"status": "background loops down", "loops": down}, 503)
        try:
            await runtime.latest_ts()
        except Exception:
            log.exception("health check could not reach the database")
            return json_response({"status": "database unavailable"}, 503)
        app = runtime.app
        body: dict[str, Any] = {"status": "ok", "functions": app.registry.app_function_count}
        if worker := os.environ.get(WORKER_ENV):  # which of `ripple serve --workers N` answered
            body["worker"] = int(worker)
            body["workers"] = int(os.environ.get(WORKERS_ENV) or 1)
        if app.load_errors:  # dev mode serves the modules that loaded
            body["loadErrors"] = app.load_errors
        return json_response(body)

    async def metrics(request: Request) -> Response:
        # A worker of a group answers for the group; `?scope=worker`: for itself only.
        if group is not None and request.query_params.get("scope") != "worker":
            text = await group.metrics()
        else:
            text = runtime.metrics.render()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "NotFound", f"no route for {request.method} {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(405, "MethodNotAllowed", f"{request.method} is not allowed on {request.url.path}")

    routes = [
        Route("/api/query", endpoint(call_query), methods=["POST"]),
        Route("/api/mutation", endpoint(call_mutation), methods=["POST"]),
        Route("/api/action", endpoint(call_action), methods=["POST"]),
        Route("/api/function", endpoint(call_any), methods=["POST"]),
        Route("/api/run/{ident:path}", endpoint(call_run), methods=["POST"]),
        Route("/api/query_ts", endpoint(api.query_ts), methods=["POST", "GET"]),
        Route("/api/query_at_ts", endpoint(call_query_at_ts), methods=["POST"]),
        Route("/api/storage/upload", endpoint(storage.upload), methods=["POST"]),
        Route("/api/storage/{storage_id}", endpoint(storage.download), methods=["GET", "HEAD"]),
        *(Route(f"/api{version}/update_environment_variables", endpoint(env.update), methods=["POST"]) for version in ("", "/v1")),
        *(Route(f"/api{version}/list_environment_variables", endpoint(env.list), methods=["GET"]) for version in ("", "/v1")),
        Route("/_ripple/export", endpoint(snapshots.export), methods=["GET"]),
        Route("/_ripple/import", endpoint(snapshots.import_), methods=["POST"]),
        Route("/_ripple/data", endpoint(snapshots.data), methods=["GET"]),
        Route("/_ripple/data/{table}", endpoint(snapshots.data), methods=["GET"]),
        Route("/_ripple/logs", endpoint(logs.logs), methods=["GET"]),
        Route("/_ripple/health", health, methods=["GET"]),
        Route("/_ripple/metrics", metrics, methods=["GET"]),
        Route("/_ripple/sdk/{name}", SdkFiles(), methods=["GET", "HEAD"]),
        Route("/_ripple/", dashboard, methods=["GET", "HEAD"]),
        Route("/_ripple/dashboard/{path:path}", dashboard, methods=["GET", "HEAD"]),
        # `ripple dev` only: `ripple serve` never signs tokens (docs/auth.md, Development issuer).
        *(dev_auth_routes(runtime.config.app_dir, runtime.config.base_url) if runtime.config.dev else ()),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(CorsMiddleware, allowed_origins=runtime.config.cors_origins)],
        exception_handlers={404: not_found, 405: method_not_allowed},
        lifespan=lifespan,
    )
    public = StaticFiles(runtime.config.app_dir / "public")
    # POST /api/query goes through the query cache's fast path first (cached_responses.py).
    queries = CachedResponses(runtime, app, CorsMiddleware(app, runtime.config.cors_origins).added_headers)
    return RippleApp(app, runtime, subscriptions, websocket_clients, HttpActions(runtime, api, load_error, public), queries)


SYNC_PATH = re.compile(r"^/api/(?:[^/]+/)?sync$")


class RippleApp:
    """The ASGI application. Sync-protocol websockets (`/api/sync`, `/api/<version>/sync`) go
    straight to the sync endpoint with the server's own `send`, which the fan-out fast path in
    server/api/sync_ws.py writes frames through; HTTP requests outside /api/ and /_ripple/ go to
    the app's HTTP actions (without the app-wide CORS: each route has its own), then to the
    files of public/ when no route takes them; `POST /api/query` goes to the query cache's fast
    path (server/api/cached_responses.py), which hands what it does not answer to Starlette;
    everything else goes to Starlette."""

    def __init__(self, starlette: Starlette, runtime: Runtime, subscriptions: SubscriptionManager, clients: set[Any],
                 http_actions: HttpActions, queries: CachedResponses) -> None:
        self.starlette = starlette
        self._runtime, self._subscriptions, self._clients = runtime, subscriptions, clients
        self._http_actions = http_actions
        self._queries = queries

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # the lifespan: its tasks are no client's
            await self._serve(scope, receive, send)
            return
        # Who started the calls this request or connection makes, for the log stream (core/log_stream.py).
        token = log_stream.caller.set(scope["type"])
        try:
            # The sync websocket awaited here, not in _serve: one coroutine frame less for each of
            # thousands of idle connections.
            if scope["type"] == "websocket" and SYNC_PATH.match(scope["path"]):
                if not self._runtime.ready:
                    await send({"type": "websocket.close", "code": 1013})  # try again later
                    return
                await serve_sync(scope, receive, send, self._runtime, self._subscriptions, self._clients)
            else:
                await self._serve(scope, receive, send)
        finally:
            log_stream.caller.reset(token)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/query" and scope["method"] == "POST":
            await self._queries(scope, receive, send)
            return
        if scope["type"] == "http" and not scope["path"].startswith(RESERVED_PREFIXES):
            await self._http_actions(scope, receive, send)
            return
        await self.starlette(scope, receive, send)
