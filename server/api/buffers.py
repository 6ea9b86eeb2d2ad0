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
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class Sized(Protocol):
    @property
    def size(self) -> int:
        """Bytes of the message it came in."""
        ...


M = TypeVar("M", bound=Sized)


class _ByteBounded(Generic[T]):
    """Items in order with their total size in bytes; `wait_for_room` waits while the total is at
    `byte_limit` or more. `peak`: the most it held at once (did the connection hold large buffers?).

    Most connections never queue anything: the deque and the event exist only while needed
    (an empty deque or asyncio.Event costs over 600 bytes, times every idle connection)."""

    __slots__ = ("_items", "_room", "byte_limit", "bytes", "peak")

    def __init__(self, byte_limit: int) -> None:
        self.byte_limit = byte_limit
        self.bytes = 0
        self.peak = 0
        self._items: deque[tuple[T, int]] | None = None
        self._room: asyncio.Event | None = None  # while someone waits for room

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    @property
    def over_bytes(self) -> bool:
        return self.bytes >= self.byte_limit

    def _append(self, item: T, size: int) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append((item, size))
        self.bytes += size
        self.peak = max(self.peak, self.bytes)

    def _popleft(self) -> T:
        assert self._items is not None
        item, size = self._items.popleft()
        self.bytes -= size
        if not self._items:
            self._items = None
        self._wake_room()
        return item

    def _wake_room(self) -> None:
        room = self._room
        if room is not None and not self.over_bytes:
            self._room = None
            room.set()

    async def wait_for_room(self) -> None:
        while self.over_bytes:
            if self._room is None:
                self._room = asyncio.Event()
            await self._room.wait()

    def clear(self) -> None:
        self._items = None
        self.bytes = 0
        self._wake_room()


class Outbox(_ByteBounded[bytes]):
    """Encoded messages for one client, in order, bounded in bytes."""

    __slots__ = ()

    def __init__(self, limit: int) -> None:
        super().__init__(limit)

    def put(self, frame: bytes) -> None:
        """Always accepted (one message may be larger than the limit on its own): producers
        call `wait_for_room` before making the next one."""
        self._append(frame, len(frame))

    def pop(self) -> bytes:
        return self._popleft()

    @property
    def full(self) -> bool:
        return self.over_bytes


class MutationQueue(_ByteBounded[M]):
    """Mutations waiting for the connection's worker (a RunMutation, or what the connection
    keeps with it), with the size of the messages they came in; `wait_for_room` waits until they
    hold less than `max_bytes`."""

    __slots__ = ("_ready", "max_count")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.max_count = max_count
        self._ready: asyncio.Event | None = None  # while `get` waits

    @property
    def full(self) -> bool:
        """No room for one more (count): the next one is over the limit."""
        return len(self) >= self.max_count

    def put(self, request: M) -> None:
        self._append(request, request.size)
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.set()

    def pop(self) -> M:
        """The first one waiting (there must be one)."""
        return self._popleft()

    async def get(self) -> M:
        while not self._items:
            if self._ready is None:
                self._ready = asyncio.Event()
            await self._ready.wait()
        return self._popleft()
