"""BASELINE servers for bench/fanout.py -- not Ripple. Minimal on purpose.

They speak just enough of the Convex sync protocol for bench/fanout_clients.mjs (Connect,
ModifyQuerySet with Adds, Transitions whose startVersion is the client's previous endVersion)
and serve the same write (`POST /api/mutation {"path", "args": {"name", "value"}}`) against
their own copy of the data: a table `counters(name text primary key, value bigint)` in a
PostgreSQL schema of their own. A write is one statement (UPDATE + pg_notify of
"name<TAB>value<TAB>commit ts", the ts being PostgreSQL's clock_timestamp() in ns, as Ripple's
commit timestamps are); a dedicated connection LISTENs for it.

Modes:

* naive -- what live queries cost WITHOUT read-set invalidation or shared executions: on every
  NOTIFY (coalesced while a pass runs) it re-runs the SQL of EVERY subscription (one
  `SELECT value FROM counters WHERE name = $1` per subscription, identical ones included, all in
  one REPEATABLE READ READ ONLY snapshot on one connection, as Ripple runs a tick), then sends a
  Transition to each client whose results changed (unchanged results are not re-sent, like
  Ripple; so the comparison isolates the cost of re-executing everything).
* floor -- the least work that could possibly deliver a write: no query at all. The NOTIFY
  payload carries the new value; the server sends it to the subscribers of that name
  (one serialized message shared by all clients at the same version). Initial results are
  `null` (never read from the database).

Stacks (the websocket server): `asgi` = uvicorn + Starlette with ws="websockets-sansio", the
stack Ripple used before its own protocol (server/api/ws_protocol.py), sends awaited with
asyncio.gather; `websockets` = the `websockets` library's own asyncio server, sends with
`broadcast()` (writes without awaiting); `raw` (floor only) = a bare asyncio Protocol that does
the opening handshake, reads masked client frames and writes each distinct message's frame,
encoded once, straight to every subscriber's transport: no framework, no per-client object
beyond the transport -- what Python on this event loop costs at least to deliver a write. Its
RFC 6455 encoding (accept key, frame parsing and building) is server/api/ws_frames.py's, pure
functions with no Ripple state, so the floor and Ripple frame alike.
Writes, /_ripple/health and /_ripple/metrics are served on --http-port by a raw asyncio HTTP/1.1
server in the same process and event loop (the same for every variant). The event loop is uvloop
when it is installed, as for Ripple (server/runner.py).

    python bench/fanout_baselines.py naive|floor --stack asgi|websockets --port P --http-port H
        --database-url URL --db-schema S --channel C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
import struct
import sys
from typing import Any

import asyncpg
import orjson
from common import ROOT

sys.path.insert(0, str(ROOT))
from server.api.ws_frames import (  # after sys.path
    CLOSE,
    PING,
    PONG,
    TEXT,
    accept_value,
    frame,
    read_frame,
    text_frames,
)

WRITE_SQL = """
WITH u AS (UPDATE counters SET value = $2 WHERE name = $1 RETURNING name)
SELECT pg_notify($3, $1 || chr(9) || $2::text || chr(9)
                 || ((extract(epoch FROM clock_timestamp()) * 1000000000)::bigint)::text)
FROM u
"""
READ_SQL = "SELECT value FROM counters WHERE name = $1"


def encode_ts(ts: int) -> str:
    return base64.b64encode(struct.pack("<Q", ts)).decode()


class Client:
    __slots__ = ("names", "query_set", "sender", "ts", "values")

    def __init__(self, sender: Any) -> None:
        self.sender = sender  # the stack's connection object
        self.query_set = 0
        self.ts = 0
        self.names: dict[int, str] = {}  # queryId -> counter name
        self.values: dict[int, Any] = {}  # queryId -> value last sent


def transition(client: Client, new_ts: int, query_set: int, modifications: str) -> str:
    return (
        f'{{"type":"Transition","startVersion":{{"querySet":{client.query_set},"identity":0,"ts":"{encode_ts(client.ts)}"}},'
        f'"endVersion":{{"querySet":{query_set},"identity":0,"ts":"{encode_ts(new_ts)}"}},"modifications":[{modifications}]}}'
    )


def query_updated(query_id: int, value: Any) -> str:
    return f'{{"type":"QueryUpdated","queryId":{query_id},"value":{orjson.dumps(value).decode()},"logLines":[],"journal":null}}'


class Hub:
    def __init__(self, mode: str, stack: str, pool: asyncpg.Pool) -> None:
        self.mode = mode
        self.stack = stack
        self.pool = pool
        self.clients: set[Client] = set()
        self.by_name: dict[str, list[tuple[Client, int]]] = {}
        self.ts = 0  # latest commit ts seen
        self.executions = 0
        self.passes = 0
        self._wake = asyncio.Event()

    # -- sending ------------------------------------------------------------------------------

    async def send_all(self, out: list[tuple[Client, str]]) -> None:
        if not out:
            return
        if self.stack == "raw":
            frames: dict[str, bytes] = {}
            for client, message in out:
                data = frames.get(message)
                if data is None:
                    data = frames[message] = text_frames(message.encode())
                client.sender.transport.write(data)
        elif self.stack == "websockets":
            from websockets.asyncio.server import broadcast

            groups: dict[str, list[Any]] = {}
            for client, message in out:
                groups.setdefault(message, []).append(client.sender)
            for message, conns in groups.items():
                broadcast(conns, message)
        else:
            await asyncio.gather(*(client.sender.send_text(message) for client, message in out),
                                 return_exceptions=True)

    # -- client messages -------------------------------------------------------------------------

    async def on_message(self, client: Client, text: str | bytes) -> None:
        message = orjson.loads(text)
        if message.get("type") != "ModifyQuerySet":
            return  # Connect, Event, ...: nothing to do here
        added = []
        for mod in message["modifications"]:
            if mod["type"] == "Add":
                name = mod["args"][0]["name"]
                client.names[mod["queryId"]] = name
                self.by_name.setdefault(name, []).append((client, mod["queryId"]))
                added.append(mod["queryId"])
        if self.mode == "naive":
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                for query_id in added:
                    client.values[query_id] = await conn.fetchval(READ_SQL, client.names[query_id])
                    self.executions += 1
        else:
            for query_id in added:
                client.values[query_id] = None
        mods = ",".join(query_updated(q, client.values[q]) for q in added)
        new_query_set = message["newVersion"]
        out = transition(client, self.ts, new_query_set, mods)
        client.query_set, client.ts = new_query_set, self.ts
        await self.send_all([(client, out)])

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        for query_id, name in client.names.items():
            subs = self.by_name.get(name)
            if subs is not None:
                with contextlib.suppress(ValueError):
                    subs.remove((client, query_id))

    # -- commits ----------------------------------------------------------------------------------

    def on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        name, value, ts = payload.split("\t")
        self.ts = max(self.ts, int(ts))
        if self.mode == "naive":
            self._wake.set()
            return
        # floor: no query; the payload is the result.
        number = int(value)
        mods: dict[int, str] = {}
        cache: dict[tuple[int, int, int], str] = {}
        out = []
        for client, query_id in self.by_name.get(name, ()):
            key = (client.query_set, client.ts, query_id)
            message = cache.get(key)
            if message is None:
                if query_id not in mods:
                    mods[query_id] = query_updated(query_id, number)
                message = cache[key] = transition(client, self.ts, client.query_set, mods[query_id])
            client.ts = self.ts
            out.append((client, message))
        task = asyncio.ensure_future(self.send_all(out))
        task.add_done_callback(lambda t: t.exception())

    async def naive_loop(self) -> None:
        async with self.pool.acquire() as conn:
            while True:
                await self._wake.wait()
                self._wake.clear()
                ts = self.ts
                subs = [(c, q) for c in list(self.clients) for q in c.names]
                results = []
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    for client, query_id in subs:
                        results.append(await conn.fetchval(READ_SQL, client.names[query_id]))
                self.executions += len(subs)
                self.passes += 1
                changed: dict[Client, list[str]] = {}
                for (client, query_id), value in zip(subs, results, strict=True):
                    if client.values.get(query_id) != value:
                        client.values[query_id] = value
                        changed.setdefault(client, []).append(query_updated(query_id, value))
                out = []
                for client, mods in changed.items():
                    out.append((client, transition(client, ts, client.query_set, ",".join(mods))))
                    client.ts = ts
                await self.send_all(out)

    # -- HTTP (writes, health, metrics) ------------------------------------------------------------

    async def http(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "POST" and path == "/api/mutation":
            request = orjson.loads(body)
            args = request["args"]
            await self.pool.fetchval(WRITE_SQL, args["name"], int(args["value"]), CHANNEL)
            return 200, b'{"status":"success","value":null,"logLines":[]}'
        if path == "/_ripple/health":
            return 200, b'{"status":"ok"}'
        if path == "/_ripple/metrics":
            subs = sum(len(c.names) for c in self.clients)
            return 200, (f"ripple_query_executions_total {self.executions}\nripple_subscriptions {subs}\n"
                         f"ripple_websocket_clients {len(self.clients)}\nbaseline_passes_total {self.passes}\n").encode()
        return 404, b'{"code":"NotFound"}'


class HttpProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 with Content-Length bodies; enough for the bench's writer."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.buffer = b""
        self.queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.task = asyncio.ensure_future(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.queue.put_nowait((method, path, body))

    async def _serve(self) -> None:  # one request at a time, in order
        while True:
            method, path, body = await self.queue.get()
            try:
                status, payload = await self.hub.http(method, path, body)
            except Exception as exc:  # a baseline: report, keep serving
                status, payload = 500, orjson.dumps({"code": "Error", "message": repr(exc)})
            self.transport.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                 % (status, len(payload)) + payload)


class RawWebSocket(asyncio.Protocol):
    """The `raw` stack: one websocket connection with as little as the bench's clients need --
    the handshake, masked client frames (text, ping, close; no fragments, no extensions) and
    unmasked server frames written to the transport."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.buf = bytearray()
        self.client: Client | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.hub.remove(self.client)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.client is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end + 4]
            key = next(v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
                       if k.strip().lower() == "sec-websocket-key")
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_value(key.encode())
                                 + b"\r\n\r\n")
            self.client = Client(self)
            self.hub.clients.add(self.client)
        while (got := read_frame(buf, 0, None)) is not None:
            received, end = got
            del buf[:end]
            opcode, payload = received.opcode, received.payload
            if opcode == CLOSE:  # answer, then hang up
                self.transport.write(frame(CLOSE, payload[:2]))
                self.transport.close()
                return
            if opcode == PING:
                self.transport.write(frame(PONG, payload))
            elif opcode == TEXT:  # in order: a floor's on_message runs to its send without awaiting
                task = asyncio.ensure_future(self.hub.on_message(self.client, payload))
                task.add_done_callback(lambda t: t.exception())


CHANNEL = ""


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


async def main(args: argparse.Namespace) -> None:
    global CHANNEL
    CHANNEL = args.channel
    settings = {"search_path": args.db_schema}
    pool = await asyncpg.create_pool(args.database_url, min_size=2, max_size=4, server_settings=settings)
    listener = await asyncpg.connect(args.database_url, server_settings=settings)
    hub = Hub(args.mode, args.stack, pool)
    await listener.add_listener(args.channel, hub.on_notify)
    loop = asyncio.get_running_loop()
    http_server = await loop.create_server(lambda: HttpProtocol(hub), "127.0.0.1", args.http_port)
    tasks = []
    if args.mode == "naive":
        tasks.append(asyncio.create_task(hub.naive_loop()))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    if args.stack == "raw":
        ws_server = await loop.create_server(lambda: RawWebSocket(hub), "127.0.0.1", args.port)
        await stop.wait()
        ws_server.close()
    elif args.stack == "websockets":
        from websockets.asyncio.server import serve

        async def handler(ws: Any) -> None:
            client = Client(ws)
            hub.clients.add(client)
            try:
                async for message in ws:
                    await hub.on_message(client, message)
            except Exception:
                pass
            finally:
                hub.remove(client)

        async with serve(handler, "127.0.0.1", args.port, compression=None, max_size=None, ping_interval=None):
            await stop.wait()
    else:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute
        from starlette.websockets import WebSocket

        async def endpoint(websocket: WebSocket) -> None:
            await websocket.accept()
            client = Client(websocket)
            hub.clients.add(client)
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    data = message.get("text")
                    if data is None:
                        data = message.get("bytes") or b""
                    await hub.on_message(client, data)
            except Exception:
                pass
            finally:
                hub.remove(client)

        app = Starlette(routes=[WebSocketRoute("/api/sync", endpoint)])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, ws="websockets-sansio",
                                               lifespan="off", log_level="warning", access_log=False,
                                               http="httptools" if _installed("httptools") else "h11"))
        serving = asyncio.create_task(server.serve())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(serving, 10)
    for task in tasks:
        task.cancel()
    http_server.close()
    await listener.close()
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("naive", "floor"))
    parser.add_argument("--stack", choices=("asgi", "websockets", "raw"), default="asgi")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--db-schema", required=True)
    parser.add_argument("--channel", required=True)
    parsed = parser.parse_args()
    if parsed.stack == "raw" and parsed.mode != "floor":
        parser.error("--stack raw serves the floor only")
    # The event loop uvicorn's "auto" (and server/runner.py) picks for Ripple: uvloop when installed.
    loop_factory: Any = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main(parsed))
    sys.exit(0)
