"""Runaway code: a function that holds the event loop without awaiting (`while True: pass`,
`time.sleep(15)`, a long computation) is interrupted at its limit with a clear timeout error, on
either loop; the server, its health check and live queries go on; every long block of the loop
is logged and counted (server/core/watchdog.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from client_sdk import FunctionError, RippleClient
from server.core import watchdog
from server.core.watchdog import Invocation, Runaway, Watchdog
from server.errors import FunctionFailure

from conftest import BASIC_APP, ServerProcess, call, open_runtime, until

LOOPS = ["uvloop", "asyncio"]
LIMIT = 0.5  # RIPPLE_BLOCKING_LIMIT of the servers here (the default is 1 s): each runaway costs it
RUNAWAYS = [  # kind, path, arguments
    ("query", "runaway:spin", {}),
    ("mutation", "runaway:sleep", {"seconds": 15}),
    ("mutation", "runaway:spin_then_write", {"name": "spun", "seconds": 3}),
    ("query", "runaway:stubborn", {}),
    ("action", "runaway:spin_in_action", {}),
    ("query", "runaway:spin_in_task", {}),
]


async def metric_samples(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        text = (await c.get("/_ripple/metrics")).text
    return {key: float(value) for key, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))}


def timed_out(path: str, limit: str = f"{LIMIT:g} s without awaiting") -> str:
    return rf"^\[Request ID: \w+\] {re.escape(path)} ran longer than {limit}$"


@pytest.mark.e2e
@pytest.mark.parametrize("loop", LOOPS)
async def test_runaway_functions_time_out_and_the_server_goes_on(start_server: Callable[..., ServerProcess], loop: str) -> None:
    server = start_server("serve", extra_env={"RIPPLE_EVENT_LOOP": loop, "RIPPLE_BLOCKING_LIMIT": str(LIMIT)})
    # Each request must be answered within 10 s: a function holding the loop would keep it 15 s
    # (time.sleep) or forever (while True), and everything else with it.
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        for kind, path, args in RUNAWAYS:
            runaway = asyncio.create_task(call(c, kind, path, args))
            await asyncio.sleep(0.2)  # it holds the loop now: these wait for it to be interrupted
            health, other = await asyncio.gather(c.get("/_ripple/health"), call(c, "query", "counters:get", {"name": "spun"}))
            r = await runaway
            assert r.status_code == 200 and r.json()["status"] == "error", r.text
            assert re.match(timed_out(path), r.json()["errorMessage"]), r.json()
            assert health.json()["status"] == "ok" and other.json()["value"] == 0  # no write of spin_then_write committed
            assert (await call(c, "mutation", "counters:inc", {"name": "after"})).json()["status"] == "success"
        for _ in range(5):  # the watchdog's signal, sent by someone else: nothing happens
            os.kill(server.proc.pid, watchdog.SIGNAL)
        assert (await call(c, "query", "counters:get", {"name": "after"})).json()["value"] == len(RUNAWAYS)
    # The watchdog reports a block when it next looks, after the loop ran again (the log line, then
    # the count): read the counts once the last runaway's block is reported, not before.
    await until(lambda: "task of query runaway:spin_in_task" in server.log())
    metrics = await metric_samples(server.url)
    for kind, count in (("query", 3), ("mutation", 2), ("action", 1)):
        assert metrics[f'ripple_function_timeouts_total{{kind="{kind}"}}'] == count
        assert metrics[f'ripple_event_loop_blocks_total{{kind="{kind}"}}'] >= count
        assert metrics[f'ripple_event_loop_blocked_seconds_total{{kind="{kind}"}}'] >= count * LIMIT * 0.9
    log = server.log()
    for who in ("query runaway:spin", "mutation runaway:sleep", "mutation runaway:spin_then_write",
                "query runaway:stubborn", "action runaway:spin_in_action"):
        assert re.search(rf"{who} held the event loop for \d\.\d\d s, at functions/runaway\.py:\d+ in \w+; interrupted\n", log), who
    assert re.search(r"the event loop was blocked for \d\.\d\d s by a task of query runaway:spin_in_task, "
                     r"at functions/runaway\.py:\d+ in _spin; interrupted\n", log), log
    assert server.proc.poll() is None


@pytest.mark.e2e
@pytest.mark.parametrize("loop", LOOPS)
async def test_a_live_query_that_runs_away_fails_and_other_subscriptions_go_on(
    start_server: Callable[..., ServerProcess], loop: str,
) -> None:
    server = start_server("serve", extra_env={"RIPPLE_EVENT_LOOP": loop, "RIPPLE_BLOCKING_LIMIT": str(LIMIT)})
    # A query holding the loop would freeze every client, and closing them too: bound it all.
    async with asyncio.timeout(30), RippleClient(server.url) as client, RippleClient(server.url) as other:
        runaway = client.subscribe("runaway:spin_at", {"name": "trip", "at": 1})
        healthy = other.subscribe("counters:get", {"name": "alive"})
        assert await runaway.__anext__() == 0 and await healthy.__anext__() == 0
        assert await other.mutation("counters:inc", {"name": "trip"}) == 1  # its re-run spins
        with pytest.raises(FunctionError, match=timed_out("runaway:spin_at")):
            await runaway.__anext__()
        for n in range(1, 4):
            assert await other.mutation("counters:inc", {"name": "alive"}) == n
            assert await healthy.__anext__() == n
        await healthy.aclose()
    async with httpx.AsyncClient(base_url=server.url) as c:
        assert (await c.get("/_ripple/health")).json()["status"] == "ok"
    # The watchdog reports the block when it next looks, after the loop ran again: wait for its line.
    await until(lambda: re.search(r"query runaway:spin_at held the event loop for \d\.\d\d s, .+; interrupted\n", server.log()))


# -- in-process ---------------------------------------------------------------------------------


@pytest.fixture
async def watching() -> AsyncIterator[tuple[Watchdog, list[tuple[str, float]]]]:
    """A watchdog on the test's loop (the main thread's: interrupts by signal)."""
    recorded: list[tuple[str, float]] = []
    dog = Watchdog(0.1, 0.3, lambda kind, seconds: recorded.append((kind, seconds)))
    dog.start()
    try:
        yield dog, recorded
    finally:
        dog.stop()
    assert signal.getsignal(watchdog.SIGNAL) == signal.SIG_DFL


def nudge() -> None:
    """Deliver the watchdog's signal here and now (pthread_kill runs the handler before it returns)."""
    signal.pthread_kill(threading.get_ident(), watchdog.SIGNAL)


async def test_the_signal_raises_only_in_the_invocation_it_was_sent_for(watching: tuple[Watchdog, Any]) -> None:
    dog, _ = watching
    for _ in range(20):  # nothing asked: a stray signal (kill -USR2) does nothing
        nudge()
    elsewhere = Invocation("query", "other:fn", 1.0, 10.0, BASIC_APP)
    running = Invocation("query", "this:fn", 1.0, 10.0, BASIC_APP)
    dog.request = (elsewhere, dog.beat)
    nudge()  # no function runs here

    async def body() -> str:
        dog.request = (elsewhere, dog.beat)
        nudge()  # another function was meant
        dog.request = (running, dog.beat - 1)
        nudge()  # this one, but in a block of the loop that is over
        dog.request = (None, dog.beat)
        nudge()  # a probe: a function's own frame is on the stack, so it is no task of one
        dog.request = (running, dog.beat)
        nudge()
        return "not interrupted"

    with pytest.raises(Runaway):
        await watchdog.run(running, body(), lambda value: value)
    nudge()  # the same request, after the function ended
    dog.request = None


async def test_a_function_blocking_past_its_limit_is_interrupted_in_process(
    namespace: str, watching: tuple[Watchdog, list[tuple[str, float]]],
) -> None:
    _, recorded = watching
    async with open_runtime(BASIC_APP, namespace, dev=True, blocking_limit=0.3) as rt:
        started = time.monotonic()
        with pytest.raises(FunctionFailure) as failure:
            await rt.call("query", "runaway:spin", {})
        assert time.monotonic() - started < 5
        message = failure.value.message  # dev mode: the error and where the code was
        assert "FunctionTimedOut: runaway:spin ran longer than 0.3 s without awaiting\n" in message
        assert re.search(r'runaway\.py", line \d+, in spin', message), message
        assert rt.metrics.value("ripple_function_timeouts_total", kind="query") == 1
        await until(lambda: any(kind == "query" for kind, _ in recorded))
    async with open_runtime(BASIC_APP, namespace, dev=False, blocking_limit=0, query_timeout=0.3) as rt:
        with pytest.raises(FunctionFailure, match=timed_out("runaway:spin", "0.3 s")):  # the whole run's limit
            await rt.call("query", "runaway:spin", {})
        with pytest.raises(FunctionFailure, match=r"^\[Request ID: \w+\] Server Error$"):  # its own TimeoutError
            await rt.call("query", "runaway:raises_timeout", {})


async def test_blocks_outside_functions_are_logged_and_counted(
    watching: tuple[Watchdog, list[tuple[str, float]]], caplog: pytest.LogCaptureFixture,
) -> None:
    _, recorded = watching
    caplog.set_level(logging.WARNING, "ripple.watchdog")
    time.sleep(0.3)  # noqa: ASYNC251 -- not in a function: logged as an operations signal, not interrupted
    await until(lambda: recorded)
    (kind, seconds), = recorded
    assert kind == "other" and 0.2 < seconds < 1, recorded
    assert re.search(r"the event loop was blocked for 0\.\d\d s outside any function, at .+test_runaway\.py:\d+ "
                     r"in test_blocks_outside_functions_are_logged_and_counted$", caplog.text, re.M), caplog.text
    # C code the loop calls itself, holding the GIL: the watchdog cannot look until it returns.
    asyncio.get_running_loop().call_soon(sum, range(20_000_000))
    await until(lambda: len(recorded) == 2)
    assert recorded[1][0] == "other" and recorded[1][1] > 0.1, recorded
    assert re.search(r"the event loop was blocked for \d\.\d\d s (outside any function, in C code the event loop "
                     r"called \(no Python frame above .+\)|by a call into C code that held the GIL throughout)",
                     caplog.text), caplog.text


def test_a_loop_outside_the_main_thread_is_interrupted_too() -> None:
    """There are no signal handlers there: the fallback raises between bytecodes."""
    outcome: list[BaseException | str] = []

    async def main() -> None:
        dog = Watchdog(0.1, 0.2, lambda kind, seconds: None)
        dog.start()
        try:
            async def spin() -> None:
                while True:
                    pass

            await watchdog.run(Invocation("query", "q:spin", 0.2, 10.0, Path.cwd()), spin(), lambda v: v)
        except Runaway as exc:
            outcome.append(exc)
        finally:
            dog.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and len(outcome) == 1 and isinstance(outcome[0], Runaway)
    assert time.monotonic() - started < 5
