"""What one websocket connection holds for its client, bounded (server/api/sync_ws.py).

- `Outbox`: encoded responses (MutationResponse, ActionResponse, errors) waiting for the
  socket, bounded in bytes. It never refuses a message; instead the producers wait for room
  before making the next one (the mutation worker before it runs a mutation, an action before
  it hands over its result), so a client that reads slowly is slowed down, not cut off, and
  what waits for it stays about one limit's worth of bytes.
- `MutationQueue`: mutations received and not run yet, bounded in count (more is a client
  misbehaving: the caller closes the connection) and in bytes (the caller stops reading the
  socket until the worker catches up, so TCP slows the client down).

Both are plain asyncio objects with no I/O of their own; `clear()` drops what they hold when
the connection ends.
"""

from __future__ import annotations

import asyncio
from collections import deque

from server.sync.protocol import RunMutation


class Outbox:
    """Encoded messages for one client, in order, with their total size in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self.peak = 0  # the most it held at once: did this connection hold large buffers?
        self._frames: deque[bytes] = deque()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes) -> None:
        """Always accepted (one message may be larger than the limit on its own): producers
        call `wait_for_room` before making the next one."""
        self._frames.append(frame)
        self.bytes += len(frame)
        self.peak = max(self.peak, self.bytes)
        if self.bytes >= self.limit:
            self._room.clear()

    def pop(self) -> bytes:
        frame = self._frames.popleft()
        self.bytes -= len(frame)
        if self.bytes < self.limit:
            self._room.set()
        return frame

    @property
    def full(self) -> bool:
        return self.bytes >= self.limit

    async def wait_for_room(self) -> None:
        await self._room.wait()

    def clear(self) -> None:
        self._frames.clear()
        self.bytes = 0
        self._room.set()


class MutationQueue:
    """Mutations waiting for the connection's worker, with the size of the messages they came in."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count, self.max_bytes = max_count, max_bytes
        self.bytes = 0
        self.peak = 0
        self._items: deque[RunMutation] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """No room for one more (count): the next one is over the limit."""
        return len(self._items) >= self.max_count

    def put(self, request: RunMutation) -> None:
        self._items.append(request)
        self.bytes += request.size
        self.peak = max(self.peak, self.bytes)
        if self.bytes >= self.max_bytes:
            self._room.clear()
        self._ready.set()

    async def get(self) -> RunMutation:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        request = self._items.popleft()
        self.bytes -= request.size
        if self.bytes < self.max_bytes:
            self._room.set()
        return request

    @property
    def over_bytes(self) -> bool:
        return self.bytes >= self.max_bytes

    async def wait_for_room(self) -> None:
        """Until the waiting mutations hold less than `max_bytes`."""
        await self._room.wait()

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
        self._room.set()
