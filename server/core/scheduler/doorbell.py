"""The scheduler loop's doorbell (loop.py): how a wake-up reaches one idle worker."""

from __future__ import annotations

import asyncio
from collections import deque


class Doorbell:
    """Wakes idle workers one at a time. A ring with nobody waiting is kept (up to `cap`), so a
    wake-up that arrives while every worker is busy is not lost."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._permits = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def ring(self, times: int = 1) -> None:
        for _ in range(times):
            while self._waiters and self._waiters[0].done():
                self._waiters.popleft()
            if self._waiters:
                self._waiters.popleft().set_result(None)
            else:
                self._permits = min(self._permits + 1, self._cap)

    async def wait(self) -> None:
        if self._permits:
            self._permits -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
