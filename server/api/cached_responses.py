"""`POST /api/query` answered from the query cache before the HTTP framework sees it.

A repeated HTTP query is the same request again and again: the same body bytes, the same
Authorization header. Once a call through the full path (Starlette, `HttpApi.run`) succeeded,
this layer knows what those bytes ask for: a query cache key (function, arguments, identity) and
a response format. When the same bytes come again it asks the query cache for that key, with the
same `QueryCache.lookup` as every call at the latest ts (the latest commit ts read after the
request arrived, the wait for the live-query tick: a hit here is exactly as fresh), and answers
with the response encoded once per cache entry: no routing, no JSON parsing, no hashing of the
arguments, no decoding and encoding of the value. Everything else (a request not seen to
succeed, a miss, a body over FAST_BODY_BYTES, the cache off, no app loaded) goes on to the full
path with the body read so far handed over; a miss counted here is not counted again there
(`QueryNote.looked_up`).

What request bytes were learned to mean stays true while
* the loaded app is the one they were learned under (the app object is compared): a reload may
  change what a path names, who may call it, what its arguments mean;
* the Authorization header is the same, byte for byte: it is part of what is looked up. The admin
  key and the identities an admin acts as are fixed for the process; a bearer token's identity
  is honoured until the token expires, as a websocket's is, without verifying it again.

A hit's response is the full path's: the same body bytes, Content-Length and Content-Type, the
CORS headers (`cors`), its log stream entry (`cached`) and its `ripple_http_requests_total`.
What is learned (the Authorization header, the body, the encoded response) is bounded by bytes,
a quarter of the query cache's, least recently used out first (docs/query-cache.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.http_api import QUERY_NOTE, QueryNote, success_body
from server.core.query_cache import Cached, CacheKey
from server.core.runtime import Runtime

FAST_BODY_BYTES = 16 * 1024  # a larger body takes the full path and is not learned
KNOWN_OVERHEAD = 200  # bytes of a learned request besides its header, body and response

Request = tuple[bytes, bytes]  # (Authorization header, body)


@dataclass(slots=True, eq=False)
class Known:
    """What a request's bytes were learned to mean, and the response last encoded for them
    (`serial`: the cache entry it encodes, 0: none; the entry itself is not held)."""

    app: object
    key: CacheKey
    fmt: str
    expires_at: float | None
    size: int
    serial: int = 0
    response: bytes = b""
    length: bytes = b""


class CachedResponses:
    """The ASGI handler of `POST /api/query` (server/api/app.py routes it here); `full` is the
    full path, `cors` the CORS headers a response to an Origin gets (None: none)."""

    def __init__(self, runtime: Runtime, full: ASGIApp, cors: Callable[[bytes | None], list[tuple[bytes, bytes]] | None]) -> None:
        self.runtime = runtime
        self.full = full
        self.cors = cors
        self.max_bytes = runtime.config.query_cache_bytes // 4
        self.bytes = 0
        self._known: OrderedDict[Request, Known] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._known)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        length = auth = origin = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization" and auth is None:
                auth = value
            elif name == b"origin":  # the last one, as CorsMiddleware reads it
                origin = value
        if (length is None or not self.max_bytes or not runtime.ready or not length.isdigit()
                or int(length) > FAST_BODY_BYTES):
            await self.full(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        note = QueryNote()
        if body is not None:
            request = (auth or b"", body)
            known = self._known.get(request)
            if known is not None:
                if known.app is runtime.app and (known.expires_at is None or time.time() < known.expires_at):
                    entry = await runtime.query_cache.lookup(known.key)
                    if entry is not None:
                        await self._answer(request, known, entry, origin, send)
                        return
                    note.looked_up = True
                else:
                    self._forget(request)
        scope[QUERY_NOTE] = note
        await self.full(scope, _replay(messages, receive), send)
        if note.learned is not None and body is not None:
            self._learn((auth or b"", body), *note.learned)

    async def _answer(self, request: Request, known: Known, entry: Cached, origin: bytes | None, send: Send) -> None:
        learned = self._known.get(request) is known  # not forgotten while the lookup waited
        if known.serial != entry.serial:
            response = success_body(entry.value(), list(entry.log_lines), known.fmt)
            if learned:
                self.bytes += len(response) - len(known.response)
            known.size += len(response) - len(known.response)
            known.serial, known.response, known.length = entry.serial, response, str(len(response)).encode()
        if learned:
            self._known.move_to_end(request)
        runtime = self.runtime
        runtime.record_cached(known.key[0], entry)
        runtime.metrics.inc("ripple_http_requests_total", route="query", status="200")
        headers = [(b"content-length", known.length), (b"content-type", b"application/json")]
        added = self.cors(origin)
        if added is not None:
            headers.extend(added)
        response = known.response
        self._evict()  # the response may have grown; this one's bytes are sent all the same
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": response})

    def _learn(self, request: Request, app: object, key: CacheKey, fmt: str, expires_at: float | None) -> None:
        size = KNOWN_OVERHEAD + len(request[0]) + len(request[1])
        self._forget(request)
        self._known[request] = Known(app, key, fmt, expires_at, size)
        self.bytes += size
        self._evict()

    def _forget(self, request: Request) -> None:
        known = self._known.pop(request, None)
        if known is not None:
            self.bytes -= known.size

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._known:
            self._forget(next(iter(self._known)))


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages read and the whole body; None for the body when it is larger than
    FAST_BODY_BYTES (then not all of it was read) or the client left."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > FAST_BODY_BYTES:
            return messages, None
        if not message.get("more_body", False):
            break
    if len(messages) == 1:
        return messages, messages[0].get("body", b"")
    return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` for the full path: the messages read here first, then the client's."""
    pending = deque(messages)

    async def replay() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replay
