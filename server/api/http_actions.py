"""Serving HTTP actions: every HTTP request outside /api/ and /_ripple/ goes to the route of
functions/http.py that matches it (server/core/http_router.py), on the API's port.

A handler gets an action ctx (`Runtime.action_context`) and a Starlette Request, and returns a
Starlette Response. It is app code, and so is sending its response (a StreamingResponse's body
iterator, a background task): both run under `Runtime.guarded`, one deadline (the action
timeout) and the blocking limit for the pair, log lines labelled `H <route>`. What goes wrong is
answered here, never by a traceback:

* no route: a GET or HEAD gets the file of public/ at that path when there is one
  (server/api/static_files.py: routes win over files), else 404; routes for other methods
  only 405 with Allow; app not loaded 503 (files are still served);
* a body over `Config.http_action_max_body_bytes`: a Content-Length over it 413 before the
  handler runs; a body that grows past it makes the handler's read raise RequestBodyTooLarge
  and is answered 413 (the connection is cut if the response had started);
* WebhookVerificationError escaping the handler 401 with its message, and so AuthFailed (the
  handler asked for the identity of a token that proves none);
* any other exception, a timeout, or a result that is not a Response 500, with a request id in
  the body and the `X-Request-Id` header (`redact`: the error itself only in dev mode).

A Bearer token that does not authenticate does not refuse the request (the Authorization header
may be the app's own); as in Convex, `ctx.auth.get_user_identity()` then raises its reason.
CORS is each route's own (`Cors`): the app-wide CorsMiddleware never sees these paths.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from server.api.http_api import HttpApi, HttpError, error_response, not_ready
from server.api.static_files import StaticFiles
from server.core.contexts import Auth, Identity
from server.core.http_router import ROUTABLE_METHODS, Cors, HttpRouter, Route
from server.core.logs import LogBuffer
from server.core.runtime import Runtime
from server.core.webhooks import WebhookVerificationError
from server.errors import AuthFailed, RippleError

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^\[Request ID: ([0-9a-f]+)\]")  # how `redact` starts a message


class RequestBodyTooLarge(RippleError):
    """Raised by a handler's read of a request body that passed the limit; answered 413."""


class FailedAuth(Auth):
    """The auth of a request whose Bearer token did not authenticate: asking who it is raises why."""

    def __init__(self, reason: str) -> None:
        super().__init__(None)
        self._reason = reason

    async def get_user_identity(self) -> Identity | None:
        raise AuthFailed(self._reason)


class BodyLimit:
    """The request body as the handler reads it, counted: past `limit` bytes every read raises.

    `after_body` is what the response gets to receive: Starlette's StreamingResponse listens for
    a disconnect while it streams (uvicorn speaks ASGI 2.3), and that listener would take body
    chunks from under a body iterator that is still reading the request; it waits until the
    handler has read the body (at once for a request without one)."""

    def __init__(self, receive: Receive, limit: int, has_body: bool) -> None:
        self._receive = receive
        self.limit = limit
        self.received = 0
        self.exceeded = False
        self.read = asyncio.Event()
        if not has_body:
            self.read.set()

    async def __call__(self) -> Message:
        if self.exceeded:
            raise self.error()
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                self.read.set()
                raise self.error()
            if not message.get("more_body", False):
                self.read.set()
        elif message["type"] == "http.disconnect":
            self.read.set()
        return message

    async def after_body(self) -> Message:
        await self.read.wait()
        return await self._receive()

    def error(self) -> RequestBodyTooLarge:
        return RequestBodyTooLarge(f"the request body exceeds the {self.limit}-byte limit of HTTP actions")


def cors_headers(cors: Cors, origin: str | None) -> list[tuple[bytes, bytes]]:
    """The CORS headers of a response of a route with `cors` to a request from `origin`."""
    headers = [(b"vary", b"Origin")]
    if origin is None or not cors.allows(origin):
        return headers
    shown = "*" if "*" in cors.origins and not cors.credentials else origin
    headers.append((b"access-control-allow-origin", shown.encode("latin-1")))
    if cors.credentials:
        headers.append((b"access-control-allow-credentials", b"true"))
    if cors.expose_headers:
        headers.append((b"access-control-expose-headers", ", ".join(cors.expose_headers).encode("latin-1")))
    return headers


class HttpActions:
    """The ASGI app of HTTP actions (RippleApp sends it every request outside the reserved paths)."""

    def __init__(self, runtime: Runtime, api: HttpApi, load_error: Callable[[], str | None],
                 public: StaticFiles | None = None) -> None:
        self.runtime = runtime
        self.api = api
        self.load_error = load_error
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        began = time.monotonic()
        started, status = "", "cut"  # the status sent, and the one counted once the response is complete

        async def recording_send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = str(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                status = started
            await send(message)

        label = await self.serve(scope, receive, recording_send)
        metrics = self.runtime.metrics
        metrics.inc("ripple_http_action_requests_total", route=label, status=status)
        metrics.observe("ripple_http_action_duration_seconds", time.monotonic() - began, route=label)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> str:
        """Answer one request; return its route's label for metrics ("none": no route ran)."""
        runtime = self.runtime
        if not runtime.ready:  # no routes to win over files: a page still loads and can say why
            if not await self.static_file(scope, receive, send):
                await not_ready(runtime, self.load_error())(scope, receive, send)
            return "none"
        router = runtime.app.http or HttpRouter()
        path, method = scope["path"], scope["method"]
        route = router.lookup(path, method)
        if route is None:
            await self.unrouted(router, scope, receive, send)
            return "none"
        declared = Request(scope).headers.get("content-length")
        limit = runtime.config.http_action_max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:  # uvicorn refuses a non-number
            await self.answer(route, scope, send, 413, "BodyTooLarge",
                              f"the request body of {declared} bytes exceeds the {limit}-byte limit of HTTP actions")
            return route.label
        has_body = (declared is not None and declared != "0") or b"chunked" in dict(scope["headers"]).get(b"transfer-encoding", b"")
        await self.run(route, scope, BodyLimit(receive, limit, has_body), send)
        return route.label

    async def unrouted(self, router: HttpRouter, scope: Scope, receive: Receive, send: Send) -> None:
        """No route of this method: a CORS preflight, or a file of public/, or 405, or 404."""
        path, method = scope["path"], scope["method"]
        if await self.static_file(scope, receive, send):
            return
        headers = Request(scope).headers
        if method == "OPTIONS":
            requested = headers.get("access-control-request-method")
            cors = router.cors_of(path, [requested] if requested else ROUTABLE_METHODS)
            if cors is not None:
                await self.preflight(router, cors, scope, headers.get("origin"), requested, send)
                return
        allowed = router.allowed(path)
        if not allowed:
            await error_response(404, "NotFound", f"no route for {method} {path}")(scope, receive, send)
            return
        response = error_response(405, "MethodNotAllowed", f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}")
        response.headers["Allow"] = ", ".join(allowed)
        await response(scope, receive, send)

    async def static_file(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a GET or HEAD with its file of public/; whether there was one."""
        if self.public is None or scope["method"] not in ("GET", "HEAD"):
            return False
        found = self.public.find(scope["path"])
        if found is None:
            return False
        await self.public.send(found, scope, receive, send)
        return True

    @staticmethod
    async def preflight(router: HttpRouter, cors: Cors, scope: Scope, origin: str | None, requested: str | None,
                        send: Send) -> None:
        headers = cors_headers(cors, origin)
        if requested is not None and (origin is None or not cors.allows(origin)):
            await send({"type": "http.response.start", "status": 403,
                        "headers": [*headers, (b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"origin not allowed by this route's CORS"})
            return
        methods = ", ".join(m for m in router.allowed(scope["path"]) if router.cors_of(scope["path"], [m]) is cors)
        headers += [(b"access-control-allow-methods", methods.encode()),
                    (b"access-control-allow-headers", ", ".join(cors.headers).encode("latin-1")),
                    (b"access-control-max-age", str(cors.max_age).encode()),
                    (b"allow", ", ".join(router.allowed(scope["path"])).encode())]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def run(self, route: Route, scope: Scope, body: BodyLimit, send: Send) -> None:
        """Run the route's handler and send its response, both as app code (module doc): one
        execution, one entry of the log stream, named by the route (`GET /files/*`)."""
        buffer = self.runtime.app_log_buffer(f"H {route.label}", keep=False)  # no client reads an HTTP action's logs
        try:
            await self.execute(route, scope, body, send, buffer)
        except BaseException as exc:
            self.runtime.log_stream.record("httpAction", route.label, buffer, exc)
            raise
        self.runtime.log_stream.record("httpAction", route.label, buffer)

    async def execute(self, route: Route, scope: Scope, body: BodyLimit, send: Send, buffer: LogBuffer) -> None:
        runtime = self.runtime
        request = Request(scope, body)
        identity, failed = await self.identity(request)
        ctx = runtime.action_context(identity, buffer)
        if failed is not None:
            ctx.auth = FailedAuth(failed)
        call = runtime.invocation("http_action", route.label, runtime.config.action_timeout)

        async def handle() -> Any:
            result = route.handler(ctx, request)
            return await result if inspect.isawaitable(result) else result

        try:
            response = await runtime.guarded(call, handle(), buffer, _as_is)
            if not isinstance(response, Response):
                raise TypeError(f"HTTP action {route.label} returned {type(response).__name__}, not a "
                                "starlette.responses.Response")
        except Exception as exc:
            await self.failed(route, scope, send, exc, body, buffer)
            return
        if body.exceeded:  # the handler swallowed the error of its read
            buffer.error = str(body.error())
            await self.answer(route, scope, send, 413, "BodyTooLarge", buffer.error)
            return
        started = False
        origin = request.headers.get("origin")

        async def send_with_cors(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if route.cors is not None:
                    message["headers"] = [*message.get("headers", []), *cors_headers(route.cors, origin)]
            await send(message)

        try:
            await runtime.guarded(call, response(scope, body.after_body, send_with_cors), buffer, _as_is)
        except Exception as exc:
            if not started:
                await self.failed(route, scope, send, exc, body, buffer)
                return
            # Nothing can be answered any more: log it, and end without completing the
            # response, so the server cuts the connection and the client sees it broken.
            runtime.redact(exc, f"HTTP action {route.label} (its response was cut)", buffer)

    async def identity(self, request: Request) -> tuple[Identity | None, str | None]:
        """(identity, why a Bearer token failed) from the Authorization header; a header that is
        not Ripple's (another scheme, a wrong admin key) is the app's to read: no identity."""
        try:
            identity, _ = await self.api.caller(request)
        except HttpError as exc:
            return None, exc.message if exc.code == "Unauthenticated" else None
        return identity, None

    async def failed(self, route: Route, scope: Scope, send: Send, exc: Exception, body: BodyLimit,
                     buffer: LogBuffer) -> None:
        """Answer the failure of a route's handler or response; `buffer` keeps what was answered
        for the log stream."""
        if isinstance(exc, ClientDisconnect):  # the client left while the handler read its body: no one to answer
            buffer.error = "the client disconnected before the request body was read"
            return
        if body.exceeded or isinstance(exc, RequestBodyTooLarge):
            buffer.error = str(body.error())
            await self.answer(route, scope, send, 413, "BodyTooLarge", buffer.error)
        elif isinstance(exc, WebhookVerificationError):
            buffer.error = str(exc)
            await self.answer(route, scope, send, 401, "WebhookVerificationFailed", buffer.error)
        elif isinstance(exc, AuthFailed):  # the handler asked who sent a token that proves no one
            buffer.error = str(exc)
            await self.answer(route, scope, send, 401, "Unauthenticated", buffer.error)
        else:
            runtime = self.runtime
            runtime.metrics.inc("ripple_function_errors_total", kind="http_action")
            message = runtime.redact(exc, f"HTTP action {route.label}", buffer)
            found = _REQUEST_ID.match(message)
            extra = [(REQUEST_ID_HEADER.lower().encode(), found.group(1).encode())] if found else []
            await self.answer(route, scope, send, 500, "InternalServerError", message, extra)

    @staticmethod
    async def answer(route: Route, scope: Scope, send: Send, status: int, code: str, message: str,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """An error response of `route`, with its CORS headers (so a page can read why)."""
        response = error_response(status, code, message)
        headers = [*response.raw_headers, *(extra or [])]
        if route.cors is not None:
            headers += cors_headers(route.cors, Request(scope).headers.get("origin"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})


def _as_is(value: Any) -> Any:
    return value
