"""A TCP proxy between Ripple and PostgreSQL that tests break on purpose, in the spirit of
asyncpg's test fuzzer (asyncpg/_testbase/fuzzer.py); our own code.

The proxy runs its own event loop on a thread, so the faults it injects happen on time however
busy the test's loop is. Its methods are called from the test's thread:

    pause() / resume()   stop forwarding in both directions (bytes wait in the proxy), go on
    slow(seconds)        delay every chunk by `seconds` in both directions (0: full speed)
    refuse(on)           while on, close every new connection at once (the database is down)
    cut(...)             close connections abruptly (all of them, or `count` chosen by an rng),
                         with a RST or a FIN; with `drop`, first discard one direction for
                         `hold` seconds: "to_server" (a request, say a COMMIT, never arrives) or
                         "to_client" (PostgreSQL ran it, the reply is lost)
    backend_ports()      the local ports of its connections to PostgreSQL (pg_stat_activity's
                         client_port of the backends serving the proxied clients)

The backend is PostgreSQL's TCP address or its Unix socket (`backend_of` reads either from a URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

T = TypeVar("T")
Direction = Literal["to_server", "to_client"]
CHUNK = 65536


def backend_of(url: str) -> tuple[str, int] | str:
    """Where a PostgreSQL URL points: (host, port), or the path of a Unix socket."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "localhost"
    port = int(query.get("port") or parts.port or 5432)
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return host, port


def through(url: str, port: int) -> str:
    """`url` with its server replaced by the proxy on loopback `port`."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


@dataclass(eq=False)
class _Pipe:
    """One client connection and the proxy's connection to PostgreSQL for it."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    dropping: set[Direction] = field(default_factory=set)
    closed: bool = False

    def abort(self, rst: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if rst and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                # The peer may have closed this side already (its transport then holds fd -1):
                # there is nothing left to reset, and aborting it is still harmless.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class FaultProxy:
    def __init__(self, backend: tuple[str, int] | str) -> None:
        self.backend = backend
        self.port = 0
        self.accepted = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._pipes: set[_Pipe] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # one per connection (asyncio.start_server's)
        self._timers: set[asyncio.Task[None]] = set()  # delayed aborts
        self._flowing = asyncio.Event()
        self._delay = 0.0
        self._refusing = False
        self._stopping = False
        self._server: asyncio.Server | None = None

    # -- life cycle (test thread) -----------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        """Close everything; each connection's handler then ends by itself (cancelling it would
        make asyncio's stream machinery log an error)."""
        assert self._server is not None
        self._stopping = True  # a connection still being set up is closed once it is
        self._flowing.set()  # paused pumps see their pipes closed
        self._server.close()
        for timer in list(self._timers):
            timer.cancel()
        for pipe in list(self._pipes):
            pipe.abort(rst=False)
        await asyncio.gather(*self._timers, *self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    # -- faults (test thread) ---------------------------------------------------------------------

    def pause(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def slow(self, seconds: float) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_delay", seconds)

    def refuse(self, on: bool) -> None:
        self._refusing = on  # a plain flag: in effect for the next connection, whichever thread

    def cut(self, *, count: int | None = None, rng: random.Random | None = None, rst: bool = True,
            drop: Direction | None = None, hold: float = 0.0) -> int:
        """Cut `count` connections (all when None) chosen with `rng`; returns how many."""
        return self._call(self._cut(count, rng or random.Random(0), rst, drop, hold))

    def backend_ports(self) -> list[int]:
        return self._call(self._backend_ports())

    async def _backend_ports(self) -> list[int]:
        names = [pipe.server.get_extra_info("sockname") for pipe in self._pipes]
        return [name[1] for name in names if isinstance(name, tuple)]

    async def _cut(self, count: int | None, rng: random.Random, rst: bool, drop: Direction | None, hold: float) -> int:
        pipes = sorted(self._pipes, key=lambda p: p.server.get_extra_info("sockname") or "")
        chosen = pipes if count is None else rng.sample(pipes, min(count, len(pipes)))
        for pipe in chosen:
            if drop is not None:
                pipe.dropping.add(drop)
        self.cuts += len(chosen)
        if drop is not None and hold > 0:
            timer = self._loop.create_task(self._abort_later(chosen, hold, rst))
            self._timers.add(timer)
            timer.add_done_callback(self._timers.discard)
        else:
            for pipe in chosen:
                pipe.abort(rst)
        return len(chosen)

    async def _abort_later(self, pipes: list[_Pipe], hold: float, rst: bool) -> None:
        await asyncio.sleep(hold)
        for pipe in pipes:
            pipe.abort(rst)

    # -- forwarding (proxy thread) ----------------------------------------------------------------

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._forward(client_reader, client)
        finally:
            self._handlers.discard(task)

    async def _forward(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            client.transport.abort()
            return
        try:
            if isinstance(self.backend, str):
                server_reader, server = await asyncio.open_unix_connection(self.backend)
            else:
                server_reader, server = await asyncio.open_connection(*self.backend)
        except OSError:
            client.transport.abort()
            return
        pipe = _Pipe(client, server)
        if self._stopping:
            pipe.abort(rst=False)
            return
        self._pipes.add(pipe)
        try:
            up = self._loop.create_task(self._pump(pipe, client_reader, server, "to_server"))
            down = self._loop.create_task(self._pump(pipe, server_reader, client, "to_client"))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
                down.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        finally:
            pipe.abort(rst=False)
            self._pipes.discard(pipe)

    async def _pump(self, pipe: _Pipe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    return
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                if direction in pipe.dropping or pipe.closed:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
