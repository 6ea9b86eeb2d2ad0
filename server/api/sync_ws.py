"""The websocket route of the Convex sync protocol: pumps bytes between a socket and a
`SyncSession`, and runs what the session asks for (subscriptions, mutations, actions).

Longer than 400 lines because the connection's reader, sender, mutation worker and actions share
its state and its ordering rules (a MutationResponse before the Transitions it held back, the
parts of a chunked Transition before anything else, a task only while there is work); split,
each part would reach into the others' state.

Per connection: a reader (client messages in order; the ASGI task itself), a sender (one
message at a time; a Transition is built only when the socket can take it, from the latest
shared results, so a slow client gets coalesced transitions and never an unbounded queue; a
large one goes to the npm client as TransitionChunk parts, each serialized when the socket can
take it), a mutation worker (mutations run one at a time, in order, idempotent per (session id,
request id)), action tasks (concurrent), and a keep-alive Ping (one timer for all of a
process's connections: `Connections`). An idle connection
holds one task, the reader's: the sender and the mutation worker are tasks only while they
have work (a Transition a client can take at once is written without one), so that thousands
of idle clients cost little memory (docs/operations.md, Sizing).

Everything a connection holds is bounded (`Config.ws_limits`, docs/operations.md, Limits): the
outbox of responses in bytes (the mutation worker and finishing actions wait for room: a slow
reader is slowed, not cut off), the mutations waiting to run in count (more closes the
connection) and in bytes (the reader stops reading until the worker catches up), the actions
running at once (more are answered with a failed ActionResponse) and the queries in the query
set (more closes the connection). When the connection ends, all of it is dropped and running
actions are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from server.api import heap, offload
from server.api.buffers import MutationQueue, Outbox
from server.api.uvicorn_frames import TextWriter, frame_writer
from server.api.ws_auth import Caller, ConnectionAuth, QueuedMutation
from server.core.contexts import Outcome
from server.core.runtime import Runtime
from server.core.shared_queries import SharedQuery
from server.core.subscriptions import SubscriptionManager
from server.core.values import dumps, from_client_json, to_wire_json
from server.errors import FunctionFailure, RippleUsageError, ValueValidationError, redact, shown
from server.sync.chunks import CHUNK_BYTES, accepts_chunks
from server.sync.protocol import (
    Authenticate,
    LimitExceeded,
    ProtocolError,
    QuerySetChanged,
    RunAction,
    RunMutation,
    SyncSession,
)
from server.wire import FunctionResult, QueryResult

log = logging.getLogger("ripple.sync")

PING_INTERVAL = 15.0
PING = dumps(SyncSession.ping())
CLOSE_FLUSH_SECONDS = 5.0  # at most this long to send a FatalError or AuthError before closing
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# The setting behind each limit, named in the errors a client gets.
SETTINGS = {
    "outbox_bytes": "RIPPLE_WS_MAX_OUTBOX_BYTES",
    "pending_mutations": "RIPPLE_WS_MAX_PENDING_MUTATIONS",
    "pending_mutation_bytes": "RIPPLE_WS_MAX_PENDING_MUTATION_BYTES",
    "concurrent_actions": "RIPPLE_WS_MAX_CONCURRENT_ACTIONS",
    "subscriptions": "RIPPLE_WS_MAX_SUBSCRIPTIONS",
}


class ClientConnection:
    __slots__ = ("_close_code", "_closing", "_dirty", "_main", "_parts", "_receive", "_send", "_sender",
                 "_sending", "_worker", "_writer", "actions", "auth", "limits", "manager", "mutations", "outbox",
                 "runtime", "session", "subs")

    def __init__(self, scope: Scope, receive: Receive, send: Send, runtime: Runtime, manager: SubscriptionManager) -> None:
        # The ASGI callables themselves (no Starlette WebSocket: its object, cached headers and
        # receive frame would cost every idle connection some 600 bytes).
        self._receive, self._send = receive, send
        self.runtime = runtime
        self.manager = manager
        self.limits = limits = runtime.config.ws_limits
        client = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"convex-client"), None)
        chunked = accepts_chunks(scope["path"], client)
        self.session = SyncSession(max_queries=limits.subscriptions, chunk_bytes=CHUNK_BYTES if chunked else None)
        self.auth = ConnectionAuth(runtime, self._expired)
        self.subs: dict[int, SharedQuery] = {}
        self.outbox = Outbox(limits.outbox_bytes)  # encoded messages waiting for the socket
        self.mutations: MutationQueue[QueuedMutation] = MutationQueue(limits.pending_mutations, limits.pending_mutation_bytes)
        self.actions: set[asyncio.Task[None]] | None = None  # while any runs
        self._dirty = False  # the sender has something to look at
        self._sender: asyncio.Task[None] | None = None  # while it has
        self._worker: asyncio.Task[None] | None = None  # while mutations wait
        self._main: asyncio.Task[Any] | None = None  # the reader's (ASGI) task, until it leaves the reader
        self._closing = False
        self._close_code = 1000
        self._sending = False
        self._parts: Iterator[bytes] | None = None  # the rest of a Transition going out in chunks
        # Under Ripple's own websocket protocol or uvicorn's sans-I/O one, frames are written to
        # the transport directly (server/api/uvicorn_frames.py); any other server gets ASGI sends.
        self._writer: TextWriter | None = None

    # -- Subscriber -----------------------------------------------------------------------------

    def notify(self) -> None:
        """Called by the subscription manager after a tick. When the socket can take a frame
        right now, the Transition is built and written here, synchronously: fanning one commit
        out to a thousand clients then costs no task switches. Otherwise the sender does it."""
        writer = self._writer
        if (self._sending or self._parts is not None or self.outbox or self._closing or writer is None
                or not writer.writable_now()):
            self._wake()
            return
        ts = self.manager.current_ts
        encoded = self.session.encoded_transition(ts, self._result_of, self.manager.encode_cache)
        if encoded is not None:
            self._parts = self.session.chunks(encoded)
            if self._parts is None:
                writer.write(encoded)
            else:  # parts go out one at a time, as the socket takes them: the sender's work
                self._wake()
        elif self.session.owes_transition and not self.session.holds(ts):  # held: the response wakes the sender
            self.manager.wait_for_ts(self)

    # -- main -------------------------------------------------------------------------------------

    async def run(self, clients: set[Any]) -> None:
        """The connection from accept to close, one of `clients` meanwhile."""
        if (await self._receive())["type"] != "websocket.connect":
            return
        await self._send({"type": "websocket.accept"})
        self._writer = frame_writer(self._send)
        self._main = asyncio.current_task()
        self.runtime.metrics.inc("ripple_websocket_connections_total")
        clients.add(self)
        try:
            try:
                await self._reader()
            except asyncio.CancelledError:
                if self._main is not None or not self._ended_here():  # cancelled from outside: the server stops
                    raise
            self._main = None
            if self._closing and self._sender is not None:  # a FatalError or AuthError on its way out
                await asyncio.wait({self._sender}, timeout=CLOSE_FLUSH_SECONDS)
        finally:
            self._main = None
            clients.discard(self)
            tasks = [t for t in (self._sender, self._worker, *(self.actions or ())) if t is not None]  # actions: the
            for task in tasks:  # client fails them on disconnect and never resends them
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.auth.cancel()
            self._release()
            with contextlib.suppress(Exception):  # the server ignores it once the connection is closed
                await self._send({"type": "websocket.close", "code": self._close_code})

    def _ended_here(self) -> bool:
        """After `_end` cancelled the reader: take that cancellation back (the task goes on to
        close the connection); False when someone else cancelled it too."""
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    def _end(self) -> None:
        """The sender or the mutation worker ended the connection (closing, or the client is
        gone): stop the reader, which then closes it."""
        main, self._main = self._main, None
        if main is not None:
            main.cancel()

    def _release(self) -> None:
        """Drop everything the connection holds, now rather than whenever the garbage collector
        breaks its reference cycles; give the memory back if that was a lot."""
        held = self.outbox.peak + self.mutations.peak
        self.outbox.clear()
        self._parts = None
        self.mutations.clear()
        self.actions = None
        for sq in self.subs.values():
            self.manager.unsubscribe(sq, self)
        self.subs.clear()
        heap.connection_closed(held)

    def _send_soon(self, message: dict[str, Any]) -> None:
        self.outbox.put(dumps(message))  # encoded now: its size is known, its values freed
        self._wake()

    def _fatal(self, error: str) -> None:
        log.info("closing websocket: %s", error)
        self._send_soon(SyncSession.fatal_error(error))
        self._closing = True
        self._close_code = 1008

    def _limit_reached(self, limit: str) -> None:
        self.runtime.metrics.inc("ripple_websocket_limit_total", limit=limit)

    def _over_limit(self, limit: str, error: str) -> None:
        """The client went over a limit that ends the connection."""
        self._limit_reached(limit)
        self._fatal(f"{error} ({SETTINGS[limit]})")

    async def _room_in_outbox(self) -> None:
        """Wait while the responses waiting for the client fill the outbox."""
        if self.outbox.full:
            self._limit_reached("outbox_bytes")
            await self.outbox.wait_for_room()

    # -- reader -----------------------------------------------------------------------------------

    async def _reader(self) -> None:
        while not self._closing:
            try:
                message = await self._receive()
            except OSError:  # the server's ClientDisconnected
                return
            proceed = await self._on_message(message)
            del message  # not kept while the connection idles
            if not proceed:
                return

    async def _on_message(self, message: Message) -> bool:
        """Run what a client message asks for; False when the connection is to end."""
        if message["type"] == "websocket.disconnect":
            return False
        data = message.get("text")
        if data is None:
            data = message.get("bytes")
        del message
        if data is None:
            return True
        if len(data) > MAX_MESSAGE_BYTES:
            self._fatal(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
            return False
        try:
            requests = self.session.receive(data)
        except LimitExceeded as exc:
            self._over_limit(exc.limit, str(exc))
            return False
        except ProtocolError as exc:
            self._fatal(str(exc))
            return False
        del data
        for request in requests:
            if isinstance(request, QuerySetChanged):
                self._reconcile()
            elif isinstance(request, RunMutation):
                if self.mutations.full:
                    self._over_limit("pending_mutations", f"more than {self.limits.pending_mutations} mutations "
                                                          "sent and not run yet on one connection")
                    return False
                self.mutations.put(QueuedMutation(request, self.auth.caller))
                if self._worker is None:
                    self._worker = asyncio.create_task(self._mutation_worker(), name="ripple-ws-mutations")
                if self.mutations.over_bytes:  # stop reading: TCP slows the client down
                    self._limit_reached("pending_mutation_bytes")
                    await self.mutations.wait_for_room()
            elif isinstance(request, RunAction):
                self._start_action(request)
            elif isinstance(request, Authenticate):
                if not await self._authenticate(request):  # awaited: what follows it runs as its identity
                    return False
        return True

    def _reconcile(self) -> None:
        """Make subscriptions match the session's query set (and current identity)."""
        wanted = self.session.queries
        for query_id in list(self.subs):
            query = wanted.get(query_id)
            sq = self.subs[query_id]
            if query is None or sq.identity != self.auth.identity or sq.admin != self.auth.admin:
                self.manager.unsubscribe(sq, self)
                del self.subs[query_id]
        for query_id, query in wanted.items():
            if query_id not in self.subs:
                self.subs[query_id] = self.manager.subscribe(query.udf_path, query.args, self.auth.identity,
                                                             query.journal, self, admin=self.auth.admin)
        self._wake()

    async def _authenticate(self, request: Authenticate) -> bool:
        """Switch to the identity `request` proves: every query runs again under it, the next
        Transition moves the identity version. Else (False) AuthError, and the connection closes."""
        error = await self.auth.switch(request)
        if error is None:
            self.session.identity_changed()
            self._reconcile()
            return True
        self._send_soon(self.session.auth_error(error))
        self._closing = True
        return False

    def _expired(self) -> None:
        """The token expired. As Convex: AuthError (no update attempted), close; the client refetches it."""
        if self._closing:
            return
        log.info("websocket identity expired; closing the connection")
        self._send_soon(self.session.auth_error("TokenExpired: the auth token expired; authenticate with a fresh one",
                                                update_attempted=False))
        self._closing = True

    # -- sender -----------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Have the sender look at the outbox, the parts and the query set (started if needed)."""
        self._dirty = True
        if self._sender is None and self._main is not None:
            self._sender = asyncio.create_task(self._sender_loop(), name="ripple-ws-sender")

    def ping(self) -> None:
        """Send the keep-alive Ping (`Connections` calls it every RIPPLE_WS_PING_SECONDS)."""
        writer = self._writer
        if self._main is None:  # not accepted yet, or ending
            return
        # With it, a websocket ping: a client gone without a word is found out (ws_protocol.py).
        if (writer is not None and not (self._sending or self._parts is not None or self.outbox or self._closing)
                and writer.writable_now()):
            writer.keepalive(PING)  # both in one write
        else:
            if writer is not None:
                writer.keepalive()
            self.outbox.put(PING)
            self._wake()

    async def _sender_loop(self) -> None:
        """Send until there is nothing left to send; ends the connection when it is closing or
        the client is gone."""
        end = False
        try:
            while self._dirty and not end:
                self._dirty = False
                end = await self._send_pending()
        except OSError:  # the client is gone (the server's ClientDisconnected): the end, not a failure
            end = True
        except Exception:
            log.error("websocket sender failed", exc_info=True)
            end = True
        finally:
            self._sender = None
        if end:
            self._end()

    async def _send_pending(self) -> bool:
        """One round of the sender; True when the connection is to close."""
        await self._send_parts()
        while self.outbox:
            await self._send_encoded(self.outbox.pop())
        if self._closing:
            return True
        # Encoded through the publish's cache: slow clients in the same state share one
        # encoding of a large result (which their parts are cut from) instead of each
        # holding a copy until it is sent.
        ts = self.manager.current_ts
        encoded = self.session.encoded_transition(ts, self._result_of, self.manager.encode_cache)
        if encoded is not None:
            self._parts = self.session.chunks(encoded)
            if self._parts is None:
                await self._send_encoded(encoded)
            else:
                await self._send_parts()
        elif self.session.owes_transition and not self.session.holds(ts):
            self.manager.wait_for_ts(self)  # a mutation's ts is not covered by a tick yet
        return False

    async def _send_parts(self) -> None:
        """Send the rest of a chunked Transition, each part made when the socket can take it.
        Nothing else goes out meanwhile (the client drops a half-assembled Transition when
        another message arrives): every other message waits in the outbox, which stays bounded
        because the mutation worker and actions wait for room in it."""
        while self._parts is not None:
            part = next(self._parts, None)
            if part is None:
                self._parts = None
                return
            await self._send_encoded(part)

    def _result_of(self, query_id: int) -> QueryResult | None:
        sq = self.subs.get(query_id)
        if sq is None or sq.result is None or sq in self.manager.stale:
            return None
        return sq.result

    async def _send_encoded(self, data: bytes) -> None:
        writer = self._writer
        if writer is None:
            await self._send({"type": "websocket.send", "text": data.decode()})
            return
        self._sending = True
        try:
            if not await writer.wait_writable():  # waits while the transport's buffer is full
                raise ConnectionResetError("the client is gone")
            writer.write(data)
        finally:
            self._sending = False

    # -- mutations and actions --------------------------------------------------------------------

    async def _mutation_worker(self) -> None:
        """Runs the mutations waiting, then ends (the reader starts it again)."""
        try:
            while self.mutations:
                await self._run_mutation()
        except Exception:
            log.error("websocket mutation worker failed", exc_info=True)
            self._end()
        finally:
            self._worker = None

    async def _run_mutation(self) -> None:
        queued = self.mutations.pop()
        await self._room_in_outbox()  # backpressure: no new result while the client is behind
        if queued.caller.expired:  # not run nor answered (resent after reconnecting): wait for the end
            self._expired()
            await asyncio.Event().wait()
        request = queued.request
        key = (self.session.session_id or "", request.request_id)
        result = await self._call("mutation", request, queued.caller, idempotency_key=key,
                                  before_commit=self._committing)
        # No await between the result and the response in the outbox (which goes out before
        # any Transition): what the session held back while it committed follows it.
        self._send_soon(self.session.mutation_response(request.request_id, result))
        if result.success:
            self.manager.trigger()  # do not wait for the NOTIFY round trip

    def _committing(self) -> None:
        """The running mutation is about to commit: Transitions past what was published until
        now may carry its writes, so they wait for its MutationResponse."""
        self.session.committing(self.manager.current_ts)

    def _start_action(self, request: RunAction) -> None:
        if len(self.actions or ()) >= self.limits.concurrent_actions:
            self._limit_reached("concurrent_actions")
            refused = FunctionResult(False, f"more than {self.limits.concurrent_actions} actions running at once on "
                                            f"one connection ({SETTINGS['concurrent_actions']}); this one was not run")
            self._send_soon(SyncSession.action_response(request.request_id, refused))
            return
        task = asyncio.create_task(self._run_action(request, self.auth.caller))
        if self.actions is None:
            self.actions = set()
        self.actions.add(task)
        task.add_done_callback(self._action_done)

    def _action_done(self, task: asyncio.Task[None]) -> None:
        if self.actions is not None:
            self.actions.discard(task)
            if not self.actions:
                self.actions = None  # an empty set costs an idle connection 216 bytes

    async def _run_action(self, request: RunAction, caller: Caller) -> None:
        """Counts against the limit on actions until its response is in the outbox, so the
        results waiting for room stay within that limit too."""
        if caller.expired:  # not run; the client fails it when the connection closes
            self._expired()
            return
        result = await self._call("action", request, caller)
        await self._room_in_outbox()
        self._send_soon(SyncSession.action_response(request.request_id, result))

    async def _call(self, kind: str, request: RunMutation | RunAction, caller: Caller,
                    idempotency_key: tuple[str, int] | None = None, before_commit: Callable[[], None] | None = None) -> FunctionResult:
        path = request.udf_path
        try:
            # Large arguments are converted on the decode thread (offload.py).
            args = await offload.decode(request.size, from_client_json, request.args, path="args")
            outcome: Outcome = await self.runtime.call(
                kind, path, args, caller.identity, allow_internal=caller.admin, idempotency_key=idempotency_key,  # type: ignore[arg-type]
                before_commit=before_commit,
            )
        except FunctionFailure as failure:
            return FunctionResult(False, failure.message, tuple(failure.log_lines),
                                  error_data=failure.data, has_error_data=failure.has_data)
        except (RippleUsageError, ValueValidationError) as exc:
            return FunctionResult(False, str(exc))
        except Exception as exc:
            return FunctionResult(False, redact(exc, f"{kind} {shown(path)}", dev=self.runtime.config.dev))
        ts = outcome.ts if outcome.ts is not None else self.manager.current_ts
        return FunctionResult(True, to_wire_json(outcome.value), tuple(outcome.log_lines), ts=ts)


class Connections(set[Any]):
    """A process's websocket connections, and the one timer that sends each of them the
    keep-alive Ping every `ping_interval` seconds (RIPPLE_WS_PING_SECONDS, PING_INTERVAL by
    default) while there are any (a timer per connection would cost every idle connection some
    700 bytes)."""

    def __init__(self, ping_interval: float = PING_INTERVAL) -> None:
        super().__init__()
        self.ping_interval = ping_interval
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: Any) -> None:
        super().add(connection)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.ping_interval, self._ping_all)

    def _ping_all(self) -> None:
        self._timer = None
        for connection in list(self):
            connection.ping()
        if self:
            self._timer = asyncio.get_running_loop().call_later(self.ping_interval, self._ping_all)


def serve_sync(scope: Scope, receive: Receive, send: Send, runtime: Runtime, manager: SubscriptionManager,
               clients: set[Any]) -> Coroutine[Any, Any, None]:
    """One websocket connection of the sync protocol, from accept to close: the coroutine to
    await (a plain function, so that each of thousands of idle connections holds no frame of
    its own here). `send` must be the server's own (see server/api/uvicorn_frames.py)."""
    return ClientConnection(scope, receive, send, runtime, manager).run(clients)
