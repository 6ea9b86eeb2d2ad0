"""uvicorn's server as `serve` runs it, stopping as soon as it is asked to and as soon as its
connections are gone.

uvicorn notices a stop only at its next tick (it checks `should_exit` every 0.1 s), then sleeps
0.1 s after asking connections to close and looks again for ones still open every 0.1 s: about
0.2 s of every stop spent waiting for nothing (a test suite stops hundreds of servers; a rolling
restart stops every worker). Here the signal wakes the main loop at once, and the stop looks for
connections and tasks still open every STOP_POLL seconds. What a stop does, and in which order, is
uvicorn's: stop accepting, ask each connection to close (websocket clients get 1012), wait up to
`timeout_graceful_shutdown` for connections and request tasks to end, cancel those left, then the
lifespan's shutdown. It relies on `uvicorn.Server`'s structure (`main_loop`, `on_tick`,
`handle_exit`, `shutdown`, `server_state`) as of uvicorn 0.54, which pyproject.toml pins as
server/api/uvicorn_frames.py needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from server import workers

log = logging.getLogger("uvicorn.error")  # where uvicorn says the same
ACCEPTED_GRACE = 0.25  # seconds between no longer accepting and closing idle connections, at a stop
TICK = 0.1  # uvicorn's tick: the Date header and its other bookkeeping, once per second every tenth
STOP_POLL = 0.01  # how often a stop looks whether connections and tasks have ended


class StoppingServer(uvicorn.Server):
    """uvicorn's server, telling `on_stop` first when it stops: uvicorn lets requests in flight
    finish before the lifespan ends, and a long poll of `GET /_ripple/logs` would hold a stop
    up for as long as it waits (log_stream.LogStream.close answers them at once)."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nap: asyncio.Future[None] | None = None  # the main loop's wait for its next tick

    async def main_loop(self) -> None:
        """uvicorn's ticks, each of which a stop signal ends early."""
        self._loop = loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000  # uvicorn's wrap (a day of ticks)
            self._nap = loop.create_future()
            timer = loop.call_later(TICK, _wake, self._nap)
            try:
                await self._nap
            finally:
                timer.cancel()
                self._nap = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A signal handler runs between two bytecodes of the loop's thread: hand the wake-up
        # to the loop rather than touch the future here.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake_main_loop)

    def _wake_main_loop(self) -> None:
        if self._nap is not None:
            _wake(self._nap)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_stop()
        for listening in self.servers:
            listening.close()
        if os.environ.get(workers.WORKER_ENV):
            # A worker of a group (a rolling restart: the others take new connections meanwhile)
            # gives connections it accepted a moment ago time to send their request: uvicorn
            # closes a connection with no request yet as idle, and a client whose request was on
            # its way would see it dropped unanswered.
            await asyncio.sleep(ACCEPTED_GRACE)
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        try:
            await asyncio.wait_for(self._connections_and_tasks_ended(), self.config.timeout_graceful_shutdown)
        except TimeoutError:
            log.error("Cancel %s running task(s), timeout graceful shutdown exceeded", len(self.server_state.tasks))
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _connections_and_tasks_ended(self) -> None:
        """Until the connections, then the tasks they started, have ended (a second Ctrl-C,
        `force_exit`, stops the wait)."""
        # A connection of uvicorn's tells no one when it ends, it only leaves the set: look.
        while self.server_state.connections and not self.force_exit:  # noqa: ASYNC110
            await asyncio.sleep(STOP_POLL)
        while self.server_state.tasks and not self.force_exit:
            await asyncio.wait(list(self.server_state.tasks), timeout=STOP_POLL)
        for listening in self.servers:
            await listening.wait_closed()


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)
