"""The bounded per-connection buffers of the websocket route (server/api/buffers.py), in-process."""

from __future__ import annotations

import asyncio

from server.api.buffers import MutationQueue, Outbox
from server.sync.protocol import RunMutation


async def test_the_outbox_takes_any_message_and_makes_producers_wait_past_its_limit() -> None:
    outbox = Outbox(limit=100)
    outbox.put(b"a" * 60)
    assert not outbox.full
    outbox.put(b"b" * 500)  # one message larger than the limit still goes in
    assert outbox.full and outbox.bytes == 560 and outbox.peak == 560
    waiter = asyncio.create_task(outbox.wait_for_room())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert outbox.pop() == b"a" * 60
    await asyncio.sleep(0)
    assert not waiter.done()  # 500 bytes still wait for the client
    assert outbox.pop() == b"b" * 500
    await asyncio.wait_for(waiter, 1)
    assert len(outbox) == 0 and outbox.bytes == 0 and outbox.peak == 560


async def test_the_mutation_queue_counts_and_weighs_what_waits() -> None:
    queue = MutationQueue(max_count=2, max_bytes=1000)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put(RunMutation(0, "m:a", {}, size=600))
    assert (await asyncio.wait_for(getter, 1)).request_id == 0
    queue.put(RunMutation(1, "m:a", {}, size=600))
    assert not queue.full and not queue.over_bytes
    queue.put(RunMutation(2, "m:a", {}, size=600))
    assert queue.full and queue.over_bytes and len(queue) == 2
    room = asyncio.create_task(queue.wait_for_room())
    await asyncio.sleep(0)
    assert not room.done()
    assert (await queue.get()).request_id == 1
    await asyncio.wait_for(room, 1)
    queue.clear()
    assert len(queue) == 0 and queue.bytes == 0 and queue.peak == 1200
