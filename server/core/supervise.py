"""Background loops that cannot die silently: the one supervisor every loop of a process runs under
(live queries, the LISTEN connections, the scheduler's clock, maintenance and workers).

A loop that ends for any reason other than being stopped — an exception, `SystemExit` or
`KeyboardInterrupt` raised inside it, a `CancelledError` it raised itself, or simply returning —
is logged at ERROR with its traceback and started again after a backoff. While it is down,
`alive` is False: /_ripple/health reports the process unhealthy, naming the loop, so a freeze is
never silent (STYLE.md: supervise side tasks, fail loudly).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.core.backoff import reconnect_delays
from server.core.metrics import Metrics

log = logging.getLogger("ripple.supervise")


class Supervised:
    """Runs `body()` as a task and restarts it whenever it ends while not stopping."""

    def __init__(self, name: str, body: Callable[[], Awaitable[None]], metrics: Metrics | None = None,
                 registry: list[Supervised] | None = None) -> None:
        self.name = name
        self._registry = registry  # where health finds it (Runtime.loops): joined at start, left at stop
        self._body = body
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._backing_off = False
        self.restarts = 0
        if metrics is not None:
            metrics.describe("ripple_loop_restarts_total", "counter",
                             "Background loops restarted after they failed (by loop)")

    @property
    def alive(self) -> bool:
        """Started and running its body (False before start, while backing off after a failure,
        after it stopped)."""
        return self._task is not None and not self._task.done() and not self._backing_off

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> None:
        self._stopping = False
        if self._registry is not None and self not in self._registry:
            self._registry.append(self)
        self._task = asyncio.create_task(self._run(), name=f"ripple-{self.name}")

    def finish(self) -> None:
        """Let the body end on its own (it returns when its owner says so); no restart after."""
        self._stopping = True

    async def stop(self) -> None:
        """Stop now: cancel the body if it still runs."""
        self._stopping = True
        if self._registry is not None and self in self._registry:
            self._registry.remove(self)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise  # we are being cancelled ourselves

    async def _run(self) -> None:
        delays = reconnect_delays(0.5, 30.0)
        while not self._stopping:
            self._backing_off = False
            try:
                await self._body()
                if self._stopping:
                    return
                failure: BaseException = RuntimeError(f"the {self.name} loop returned while it should run")
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    raise  # stopped, or the process shuts down
                failure = exc  # raised inside the loop, not a request to stop it
            except BaseException as exc:
                failure = exc
            self._backing_off = True
            self.restarts += 1
            if self._metrics is not None:
                self._metrics.inc("ripple_loop_restarts_total", loop=self.name)
            delay = next(delays)
            log.error("the %s loop failed (%s); restarting it in %.1f s", self.name, type(failure).__name__, delay,
                      exc_info=failure)
            await asyncio.sleep(delay)
