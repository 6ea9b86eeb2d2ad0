"""The bounded per-connection buffers of the websocket route (server/api/buffers.py) and their
settings, in-process."""

from __future__ import annotations

import asyncio

import pytest

from server.api.buffers import MutationQueue, Outbox
from server.config import Config, WebsocketLimits
from server.sync.protocol import RunMutation


def test_the_limits_come_from_the_environment_and_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config.from_env().ws_limits == WebsocketLimits()
    assert WebsocketLimits().outbox_bytes == 8 * 1024 * 1024 and WebsocketLimits().pending_mutations == 1000
    monkeypatch.setenv("RIPPLE_WS_MAX_OUTBOX_BYTES", "65536")
    monkeypatch.setenv("RIPPLE_WS_MAX_SUBSCRIPTIONS", "50")
    limits = Config.from_env().ws_limits
    assert (limits.outbox_bytes, limits.subscriptions, limits.concurrent_actions) == (65536, 50, 1000)
    for bad, message in (("0", "must be at least 1, not 0"), ("1e6", "must be a whole number, not '1e6'")):
        monkeypatch.setenv("RIPPLE_WS_MAX_CONCURRENT_ACTIONS", bad)
        with pytest.raises(ValueError, match=f"RIPPLE_WS_MAX_CONCURRENT_ACTIONS {message}"):
            Config.from_env()


def test_the_keepalive_ping_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config.from_env().ws_ping_seconds == 15.0
    monkeypatch.setenv("RIPPLE_WS_PING_SECONDS", "2.5")
    assert Config.from_env().ws_ping_seconds == 2.5
    for bad, message in (("0", "must be more than 0, not '0'"), ("soon", "must be a number of seconds, not 'soon'")):
        monkeypatch.setenv("RIPPLE_WS_PING_SECONDS", bad)
        with pytest.raises(ValueError, match=f"RIPPLE_WS_PING_SECONDS {message}"):
            Config.from_env()


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
