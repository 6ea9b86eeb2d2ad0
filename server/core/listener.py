"""LISTEN on a dedicated PostgreSQL connection: a hint that the change log advanced.

NOTIFY is never the truth (payloads are capped and a disconnected listener misses them); the
tables are (the change log, the scheduler table). So the listener only wakes its owner, with the
payload as a hint; after every (re)connect and every loss it wakes it too (payload None), so the
owner catches up from the tables and knows to poll while the connection is down. The live-query
manager listens on the commit channel, the scheduler on the jobs channel: one class for both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum
from typing import Any

import asyncpg

from server.core.backoff import reconnect_delays
from server.core.supervise import Supervised

log = logging.getLogger("ripple.listener")


class ListenerState(Enum):
    CONNECTING = "connecting"
    LISTENING = "listening"
    STOPPED = "stopped"


class Listener:
    """Keeps one connection LISTENing on `channel`; calls `wake(payload)` on every notification
    and `wake(None)` after every successful (re)connect and every loss of the connection."""

    def __init__(self, url: str, channel: str, wake: Callable[[str | None], None], server_settings: dict[str, str] | None = None,
                 loops: list[Supervised] | None = None) -> None:
        self.url = url
        self.channel = channel
        self.wake = wake
        self.server_settings = server_settings or {}
        self.state = ListenerState.CONNECTING
        self.backend_pid: int | None = None
        self.loop = Supervised(f"listener {channel}", self._run, registry=loops)  # loops: Runtime.loops
        self._lost = asyncio.Event()

    @property
    def healthy(self) -> bool:
        return self.state is ListenerState.LISTENING

    def start(self) -> None:
        self.loop.start()

    async def stop(self) -> None:
        self.state = ListenerState.STOPPED
        await self.loop.stop()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.wake(payload)

    def _on_terminate(self, conn: Any) -> None:
        self._lost.set()

    async def _run(self) -> None:
        delays = reconnect_delays()
        while self.state is not ListenerState.STOPPED:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.url, server_settings={**self.server_settings, "application_name": f"ripple-listener {self.channel}"[:63]})
                self._lost.clear()
                conn.add_termination_listener(self._on_terminate)
                await conn.add_listener(self.channel, self._on_notify)
                self.backend_pid = conn.get_server_pid()
                self.state = ListenerState.LISTENING
                delays = reconnect_delays()
                self.wake(None)  # catch up on whatever happened while we were not listening
                while not self._lost.is_set():
                    # Detect half-dead connections: a cheap round trip every few seconds.
                    try:
                        await asyncio.wait_for(self._lost.wait(), timeout=5.0)
                    except TimeoutError:
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=5.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection refused, terminated backend, timeout...
                if self.state is not ListenerState.STOPPED:
                    log.warning("listener on %s lost its connection (%s: %s); reconnecting", self.channel, type(exc).__name__, exc)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            if self.state is ListenerState.STOPPED:
                return
            self.state = ListenerState.CONNECTING
            self.wake(None)  # the owner falls back to polling until we are back
            await asyncio.sleep(next(delays))
