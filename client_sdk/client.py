"""The asyncio Python client: live queries, mutations and actions over the Convex sync protocol.

    async with RippleClient("http://127.0.0.1:3210") as client:
        await client.mutation("counters:inc", {"name": "a"})
        print(await client.query("counters:get", {"name": "a"}))
        async for value in client.subscribe("counters:get", {"name": "a"}):
            ...

It reconnects by itself (exponential backoff with jitter), resubscribes, and resends
unconfirmed mutations, which the server deduplicates; actions in flight fail with
ConnectionLost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from enum import Enum
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from client_sdk.auth import TokenFetcher, TokenRefresher
from client_sdk.protocol import (
    AuthConfirmed,
    AuthRejected,
    ClientProtocol,
    QueriesUpdated,
    QueryResult,
    RequestFinished,
    ServerFatal,
)
from server.core.backoff import exponential_backoff
from server.core.values import from_convex_json

log = logging.getLogger("client_sdk")


class RippleClientError(Exception):
    """Base of the client's errors."""


class ConvexError(RippleClientError):
    """An application error raised by a function with `ConvexError(data)`; `data` is decoded."""

    def __init__(self, message: str, data: Any) -> None:
        super().__init__(message)
        self.data = data


class FunctionError(RippleClientError):
    """A function failed with a server error (the message is redacted outside dev mode)."""


class ConnectionLost(RippleClientError):
    """The connection dropped while an action was running; actions are never resent."""


class AuthenticationError(RippleClientError):
    """The server refused the auth token."""


class State(Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


def backoff() -> Iterator[float]:
    """Reconnect delays: 0.1 s doubling to 10 s, full jitter."""
    return exponential_backoff(0.1, 10.0, jitter="full")


def _error_from(response: dict[str, Any]) -> RippleClientError:
    message = str(response.get("result") or response.get("errorMessage") or "function failed")
    if "errorData" in response:
        return ConvexError(message, from_convex_json(response["errorData"]))
    if message == "Connection lost while action was in flight":
        return ConnectionLost(message)
    return FunctionError(message)


_LEVELS = {"[ERROR]": logging.ERROR, "[WARN]": logging.WARNING, "[DEBUG]": logging.DEBUG}


def show_log_lines(kind: str, path: str, lines: list[str]) -> None:
    """A function's log lines on the `client_sdk` logger, as the official clients print them
    (`[CONVEX Q(path)] [INFO] text`), at the line's level ([LOG] and [INFO] as INFO)."""
    for line in lines:
        level = _LEVELS.get(line[: line.find("]") + 1], logging.INFO)
        log.log(level, "[CONVEX %s(%s)] %s", kind, path, line)


def _query_value(result: QueryResult) -> Any:
    if result.ok:
        return from_convex_json(result.value)
    message = result.error_message or "query failed"
    if result.has_error_data:
        raise ConvexError(message, from_convex_json(result.error_data))
    raise FunctionError(message)


class RippleClient:
    def __init__(self, url: str, *, token: str | None = None, admin_key: str | None = None,
                 acting_as: dict[str, Any] | None = None) -> None:
        """`token`: a user's JWT. `admin_key` (for tools, never in an app's client): the
        deployment's admin key instead, acting as the user `acting_as` (identity attributes:
        `{"subject": ...}` with an issuer or a tokenIdentifier) or, without it, as the admin."""
        base = url.rstrip("/")
        if base.startswith("http://"):
            base = "ws://" + base[len("http://"):]
        elif base.startswith("https://"):
            base = "wss://" + base[len("https://"):]
        self.ws_url = base + "/api/sync"
        self.protocol = ClientProtocol()
        self.protocol.auth_token = token
        self.protocol.admin_key = admin_key
        self.protocol.acting_as = acting_as
        self.state = State.DISCONNECTED
        self.reconnects = 0
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._watchers: dict[int, set[asyncio.Queue[QueryResult]]] = {}
        self._connected = asyncio.Event()
        self._fatal: RippleClientError | None = None
        self._refresher: TokenRefresher | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._auth_ready = asyncio.Event()  # cleared while a refused token is replaced: no reconnect meanwhile
        self._auth_ready.set()
        self._on_auth_change: Callable[[bool], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> RippleClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ripple-client")

    async def close(self) -> None:
        self.state = State.CLOSED
        self._stop_refresher()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost("client closed"))

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def _run(self) -> None:
        delays = backoff()
        close_reason = "InitialConnect"
        while self.state is not State.CLOSED:
            await self._auth_ready.wait()
            self.state = State.CONNECTING
            try:
                async with connect(self.ws_url, max_size=None, open_timeout=10) as ws:
                    self._ws = ws
                    for message in self.protocol.on_connect(close_reason):
                        await ws.send(_dumps(message))
                    self.state = State.CONNECTED
                    self._connected.set()
                    delays = backoff()
                    async for text in ws:
                        self._handle(text)
                close_reason = "ServerClosed"
            except asyncio.CancelledError:
                raise
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                close_reason = type(exc).__name__
                log.debug("connection to %s lost: %s", self.ws_url, exc)
            finally:
                self._ws = None
                self._connected.clear()
                for event in self.protocol.on_disconnect():
                    self._dispatch(event)
            if self._fatal is not None or self.state is State.CLOSED:
                break
            self.state = State.DISCONNECTED
            self.reconnects += 1
            await asyncio.sleep(next(delays))

    def _handle(self, text: str | bytes) -> None:
        for event in self.protocol.receive(text):
            self._dispatch(event)

    def _dispatch(self, event: object) -> None:
        if isinstance(event, QueriesUpdated):
            for query_id in event.query_ids:
                result = self.protocol.results.get(query_id)
                query = self.protocol.queries.get(query_id)
                if result is not None and result.log_lines and query is not None:
                    show_log_lines("Q", query.path, result.log_lines)
                if result is not None:
                    for queue in self._watchers.get(query_id, ()):
                        _put_latest(queue, result)
        elif isinstance(event, RequestFinished):
            future = self._pending.pop(event.request_id, None)
            if future is not None and not future.done():
                future.set_result(event.response)
        elif isinstance(event, AuthConfirmed):
            if self._refresher is not None:
                self._refresher.confirmed()
        elif isinstance(event, AuthRejected):
            self._auth_rejected(event)
        elif isinstance(event, ServerFatal):
            self._fatal = FunctionError(f"server closed the connection: {event.error}")
            self._fail_all(self._fatal)

    def _auth_rejected(self, event: AuthRejected) -> None:
        """The server refused the token and closes the connection. With a token fetcher, a fresh
        token is fetched before reconnecting; a plain token is dropped: requests waiting fail,
        and the client goes on unauthenticated."""
        if self._refresher is not None:
            self._auth_ready.clear()
            self._refresher.rejected()
            return
        if self.protocol.auth_token is None:
            return
        log.error("the server refused the auth token: %s", event.error)
        self.protocol.set_auth(None)
        self._fail_all(AuthenticationError(event.error))
        if self._on_auth_change is not None:
            self._on_auth_change(False)

    def _fail_all(self, error: RippleClientError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for queues in self._watchers.values():
            for queue in queues:
                _put_latest(queue, QueryResult(False, error_message=str(error)))

    async def _send(self, message: dict[str, Any] | None) -> None:
        if message is not None and self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(_dumps(message))

    # -- public API ---------------------------------------------------------------------------

    def set_auth(self, token: str | TokenFetcher | None, on_change: Callable[[bool], None] | None = None) -> None:
        """Authenticate with `token`, a JWT, for this and future connections (None signs out), or
        with a token fetcher, `async def fetch(force_refresh: bool) -> str | None`, which the client
        calls for a token now, for a fresh one before that one expires, and again when the server
        refuses one (client_sdk/auth.py). `on_change(bool)`: called when the client becomes
        authenticated, and when a token is refused for good."""
        self._stop_refresher()
        self._on_auth_change = on_change
        if callable(token):
            self._refresher = TokenRefresher(token, self._use_token, on_change)
            self._auth_ready.clear()  # a client not connected yet waits for the first token
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresher.run(), name="ripple-client-auth")
            return
        self._use_token(token)

    def _use_token(self, token: str | None) -> None:
        message = self.protocol.set_auth(token)
        self._auth_ready.set()
        if message is not None:
            asyncio.get_running_loop().create_task(self._send(message))

    def _stop_refresher(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        self._refresher = self._refresh_task = None
        self._auth_ready.set()

    async def mutation(self, path: str, args: dict[str, Any] | None = None) -> Any:
        """Run a mutation; returns once its effects are visible to this client's queries."""
        return await self._request("Mutation", path, args or {})

    async def action(self, path: str, args: dict[str, Any] | None = None) -> Any:
        return await self._request("Action", path, args or {})

    async def _request(self, kind: str, path: str, args: dict[str, Any]) -> Any:
        self.start()
        request_id, message = self.protocol.request(kind, path, args)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self._send(message)
        response = await future
        show_log_lines(kind[0], path, response.get("logLines") or [])
        if not response.get("success"):
            raise _error_from(response)
        return from_convex_json(response.get("result"))

    async def query(self, path: str, args: dict[str, Any] | None = None) -> Any:
        """The current result of a query (subscribes until the first result arrives)."""
        async for value in self.subscribe(path, args):
            return value
        raise ConnectionLost("subscription ended")  # pragma: no cover

    async def subscribe(self, path: str, args: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """Yield the query's result now and after every change; raises ConvexError or
        FunctionError if the query fails. Stop iterating to unsubscribe."""
        self.start()
        query_id, message, _ = self.protocol.subscribe(path, args or {})
        queue: asyncio.Queue[QueryResult] = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(query_id, set()).add(queue)
        await self._send(message)
        current = self.protocol.results.get(query_id)
        if current is not None:
            _put_latest(queue, current)
        try:
            while True:
                result = await queue.get()
                yield _query_value(result)
        finally:
            watchers = self._watchers.get(query_id, set())
            watchers.discard(queue)
            if not watchers:
                self._watchers.pop(query_id, None)
                await self._send(self.protocol.unsubscribe(query_id))


def _put_latest(queue: asyncio.Queue[QueryResult], result: QueryResult) -> None:
    """Keep only the newest result for a slow consumer."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(result)


def _dumps(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()
