"""The websocket route of the Convex sync protocol: pumps bytes between a socket and a
`SyncSession`, and runs what the session asks for (subscriptions, mutations, actions).

Per connection: a reader (client messages in order), a sender (one message at a time; a
Transition is built only when the socket can take it, from the latest shared results, so a slow
client gets coalesced transitions and never an unbounded queue), a mutation worker (mutations
run one at a time, in order, idempotent per (session id, request id)), action tasks (concurrent),
and a keep-alive ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from server.api.uvicorn_frames import FrameWriter, frame_writer
from server.core.contexts import Identity, Outcome
from server.core.runtime import Runtime
from server.core.shared_queries import SharedQuery
from server.core.subscriptions import SubscriptionManager
from server.core.values import from_convex_json, to_convex_json
from server.errors import FunctionFailure, RippleUsageError, ValueValidationError, redact, shown
from server.sync.protocol import (
    Authenticate,
    ProtocolError,
    QuerySetChanged,
    RunAction,
    RunMutation,
    SyncSession,
)
from server.wire import FunctionResult, QueryResult

log = logging.getLogger("ripple.sync")

PING_INTERVAL = 15.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ClientConnection:
    def __init__(self, scope: Scope, receive: Receive, send: Send, runtime: Runtime, manager: SubscriptionManager) -> None:
        self.ws = WebSocket(scope, receive, send)
        self._asgi_send = send
        self.runtime = runtime
        self.manager = manager
        self.session = SyncSession()
        self.identity: Identity | None = None
        self.admin = False
        self.subs: dict[int, SharedQuery] = {}
        self.outbox: deque[dict[str, Any]] = deque()
        self.mutations: asyncio.Queue[RunMutation] = asyncio.Queue()
        self.actions: set[asyncio.Task[None]] = set()
        self._dirty = asyncio.Event()
        self._closing = False
        self._close_code = 1000
        self._sending = False
        # With uvicorn's sans-I/O websockets protocol, frames are written to its transport
        # directly (server/api/uvicorn_frames.py); any other server gets ASGI sends.
        self._writer: FrameWriter | None = None

    # -- Subscriber -----------------------------------------------------------------------------

    def notify(self) -> None:
        """Called by the subscription manager after a tick. When the socket can take a frame
        right now, the Transition is built and written here, synchronously: fanning one commit
        out to a thousand clients then costs no task switches. Otherwise the sender does it."""
        writer = self._writer
        if self._sending or self.outbox or self._closing or writer is None or not writer.writable_now():
            self._dirty.set()
            return
        encoded = self.session.encoded_transition(self.manager.current_ts, self._result_of, self.manager.encode_cache)
        if encoded is not None:
            writer.write(encoded)
        elif self.session.owes_transition:
            self.manager.wait_for_ts(self)

    # -- main -------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        self._writer = frame_writer(self._asgi_send)
        tasks = [
            asyncio.create_task(self._reader(), name="ripple-ws-reader"),
            asyncio.create_task(self._sender(), name="ripple-ws-sender"),
            asyncio.create_task(self._mutation_worker(), name="ripple-ws-mutations"),
        ]
        self.runtime.metrics.inc("ripple_websocket_connections_total")
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("websocket connection task failed", exc_info=task.exception())
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for sq in self.subs.values():
                self.manager.unsubscribe(sq, self)
            self.subs.clear()
            if self.ws.application_state != WebSocketState.DISCONNECTED:
                with contextlib.suppress(Exception):
                    await self.ws.close(self._close_code)

    def _send_soon(self, message: dict[str, Any]) -> None:
        self.outbox.append(message)
        self._dirty.set()

    def _fatal(self, error: str) -> None:
        log.info("closing websocket: %s", error)
        self._send_soon(SyncSession.fatal_error(error))
        self._closing = True
        self._close_code = 1008

    # -- reader -----------------------------------------------------------------------------------

    async def _reader(self) -> None:
        while not self._closing:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is None:
                continue
            if len(data) > MAX_MESSAGE_BYTES:
                self._fatal(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
                return
            try:
                requests = self.session.receive(data)
            except ProtocolError as exc:
                self._fatal(str(exc))
                return
            for request in requests:
                if isinstance(request, QuerySetChanged):
                    self._reconcile()
                elif isinstance(request, RunMutation):
                    self.mutations.put_nowait(request)
                elif isinstance(request, RunAction):
                    task = asyncio.create_task(self._run_action(request))
                    self.actions.add(task)
                    task.add_done_callback(self.actions.discard)
                elif isinstance(request, Authenticate):
                    if not self._authenticate(request):
                        return

    def _reconcile(self) -> None:
        """Make subscriptions match the session's query set (and current identity)."""
        wanted = self.session.queries
        for query_id in list(self.subs):
            query = wanted.get(query_id)
            sq = self.subs[query_id]
            if query is None or sq.identity != self.identity:
                self.manager.unsubscribe(sq, self)
                del self.subs[query_id]
        for query_id, query in wanted.items():
            if query_id not in self.subs:
                self.subs[query_id] = self.manager.subscribe(query.udf_path, query.args, self.identity, query.journal, self)
        self._dirty.set()

    def _authenticate(self, request: Authenticate) -> bool:
        if request.token_type == "None":
            identity, admin = None, False
        elif request.token_type == "Admin":
            key = self.runtime.config.admin_key
            if not key or not request.value or not secrets.compare_digest(request.value.encode(), key.encode()):
                self._send_soon(self.session.auth_error("the admin key is not valid"))
                self._closing = True
                return False
            identity, admin = None, True
        else:
            self._send_soon(self.session.auth_error(
                "authentication failed: no auth providers are configured (functions/auth_config.py)"))
            self._closing = True
            return False
        self.identity, self.admin = identity, admin
        self.session.identity_changed()
        self._reconcile()
        return True

    # -- sender -----------------------------------------------------------------------------------

    async def _sender(self) -> None:
        with contextlib.suppress(WebSocketDisconnect):  # the client is gone: the end, not a failure
            while True:
                try:
                    await asyncio.wait_for(self._dirty.wait(), PING_INTERVAL)
                except TimeoutError:
                    await self._send(SyncSession.ping())
                    continue
                self._dirty.clear()
                while self.outbox:
                    await self._send(self.outbox.popleft())
                if self._closing:
                    return
                message = self.session.transition(self.manager.current_ts, self._result_of)
                if message is not None:
                    await self._send(message)
                elif self.session.owes_transition:
                    self.manager.wait_for_ts(self)  # a mutation's ts is not covered by a tick yet

    def _result_of(self, query_id: int) -> QueryResult | None:
        sq = self.subs.get(query_id)
        if sq is None or sq.result is None or sq in self.manager.stale:
            return None
        return sq.result

    async def _send(self, message: dict[str, Any]) -> None:
        """Raises WebSocketDisconnect when the client is gone."""
        data = orjson.dumps(message)
        writer = self._writer
        if writer is None:
            await self.ws.send_text(data.decode())
            return
        self._sending = True
        try:
            if not await writer.wait_writable():  # waits while the transport's buffer is full
                raise WebSocketDisconnect(1006)
            writer.write(data)
        finally:
            self._sending = False

    # -- mutations and actions --------------------------------------------------------------------

    async def _mutation_worker(self) -> None:
        while True:
            request = await self.mutations.get()
            key = (self.session.session_id or "", request.request_id)
            result = await self._call("mutation", request.udf_path, request.args, idempotency_key=key)
            self._send_soon(self.session.mutation_response(request.request_id, result))
            if result.success:
                self.manager.trigger()  # do not wait for the NOTIFY round trip

    async def _run_action(self, request: RunAction) -> None:
        result = await self._call("action", request.udf_path, request.args)
        self._send_soon(SyncSession.action_response(request.request_id, result))

    async def _call(self, kind: str, path: str, args_json: Any, idempotency_key: tuple[str, int] | None = None) -> FunctionResult:
        try:
            args = from_convex_json(args_json)
            outcome: Outcome = await self.runtime.call(
                kind, path, args, self.identity, allow_internal=self.admin, idempotency_key=idempotency_key  # type: ignore[arg-type]
            )
        except FunctionFailure as failure:
            return FunctionResult(False, failure.message, tuple(failure.log_lines),
                                  error_data=failure.data, has_error_data=failure.has_data)
        except (RippleUsageError, ValueValidationError) as exc:
            return FunctionResult(False, str(exc))
        except Exception as exc:
            return FunctionResult(False, redact(exc, f"{kind} {shown(path)}", dev=self.runtime.config.dev))
        ts = outcome.ts if outcome.ts is not None else self.manager.current_ts
        return FunctionResult(True, to_convex_json(outcome.value), tuple(outcome.log_lines), ts=ts)


async def serve_sync(scope: Scope, receive: Receive, send: Send, runtime: Runtime, manager: SubscriptionManager,
                     clients: set[Any]) -> None:
    """One websocket connection of the sync protocol, from accept to close. `send` must be the
    server's own (see server/api/uvicorn_frames.py)."""
    connection = ClientConnection(scope, receive, send, runtime, manager)
    clients.add(connection)
    try:
        await connection.run()
    finally:
        clients.discard(connection)
