"""Runaway code: a function that holds the event loop past its limit is interrupted, and every
long block of the loop is logged and counted.

A call's deadline (deadlines.py, as `asyncio.timeout`) fires only when the code it bounds awaits: `while True: pass`, `time.sleep(15)`
or a long computation would hold the event loop (every client of the process, health checks,
live queries) until it ends, if ever. A `Watchdog` is a thread watching the loop's thread:

- Heartbeat: the loop refreshes `beat` every INTERVAL; the watchdog looks every INTERVAL, and a
  heartbeat older than STALE means the loop is blocked.
- Who blocks it: `Runtime.invoke` awaits every function through `run`, whose frame holds the
  call's `Invocation`. The coroutines awaiting a running coroutine are chained to it by `f_back`,
  so the innermost `run` frame on the loop thread's stack (`sys._current_frames`) is the function
  on the CPU. Nothing is done per step of a function.
- Interrupting: once that function has held the loop for its `limit` (or is past its deadline),
  the watchdog sends SIGNAL to the loop thread. The handler runs there between two bytecodes or
  inside a blocking call (`time.sleep`, a lock, a socket read: PEP 475); it raises `Runaway` only
  if the call the watchdog named is still the innermost one and the loop has not run since, so a
  signal at any other moment raises nothing. `Runaway` is a BaseException (`except Exception:`
  does not swallow it), sent again every INTERVAL while the function keeps the loop;
  `Runtime.invoke` turns it into `FunctionTimedOut`. A block with no `run` frame on the stack
  (a task a function started) gets a probe: the handler asks the context (`current`) whose task
  it is, and interrupts it if app code is on the stack and it is past its limit. Off the main
  thread (no signal handlers there) `PyThreadState_SetAsyncExc` interrupts bytecode but not a
  blocking call, and may land just after the function ended: nothing can check there first.
- Counting: time counts while the watchdog looks on time, plus the loop thread's CPU time when
  it could not (C code holding the GIL), so a process starved of CPU or paused is not taken for
  a blocked loop. A block is reported when it ends (one WARNING, logger `ripple.watchdog`, with
  its wall-clock length and the function and app line it was at, or the top frame), with "so
  far" lines while it lasts; `record(kind, seconds)` counts it.

One call into C code that does not return to the interpreter (a regular expression backtracking
for minutes, `sum(range(10**12))`) cannot be interrupted, nor watched while it holds the GIL: it
is reported, and its function interrupted, when it returns. Code that catches BaseException and
carries on is interrupted again and again but never stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from server.errors import FunctionTimedOut, is_app_file

log = logging.getLogger("ripple.watchdog")

T = TypeVar("T")
SIGNAL = signal.SIGUSR2
INTERVAL = 0.025  # heartbeat period, and how often the watchdog looks
STALE = 2 * INTERVAL  # a heartbeat older than this: the loop is blocked
CAP = 3 * INTERVAL  # the most wall time one late look counts without CPU time to show for it
STILL_BLOCKED_AFTER = 2.0  # the first "so far" warning of a block that lasts
STILL_BLOCKED_EVERY = 10.0


class Runaway(BaseException):
    """Raised into a function that held the event loop past its limit (see the module doc)."""


class Invocation:
    """One running call of a function, as the watchdog sees it."""

    __slots__ = ("app_dir", "deadline", "kind", "limit", "path", "timeout")

    def __init__(self, kind: str, path: object, limit: float, timeout: float, app_dir: Path) -> None:
        self.kind = kind
        self.path = path
        self.limit = limit  # how long it may hold the loop at a stretch; 0: no limit
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout  # past this, any block of it is interrupted
        self.app_dir = app_dir

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"

    def over(self, held: float, now: float) -> bool:
        """Past a limit: held the loop `held` seconds at a stretch of its `limit`, or past its deadline."""
        return (bool(self.limit) and held >= self.limit) or now >= self.deadline


# The call whose code runs in this context: tasks a function starts inherit it.
current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("ripple_invocation", default=None)


async def run(invocation: Invocation, body: Awaitable[Any], finish: Callable[[Any], T]) -> T:
    """`finish(await body)`: Runtime.invoke runs a function's code through this coroutine, whose
    frame (holding `invocation`) marks the function on the loop thread's stack."""
    return finish(await body)


_RUN = run.__code__


def timed_out(call: Invocation, stopped: BaseException) -> FunctionTimedOut:
    """The error of a call stopped by a limit (by Runaway, or by asyncio.timeout's TimeoutError),
    with the traceback of where its code was."""
    if isinstance(stopped, Runaway) and time.monotonic() < call.deadline:
        over = f"{call.limit:g} s without awaiting"
    else:
        over = f"{call.timeout:g} s"
        if isinstance(stopped, TimeoutError):  # its context, the cancellation, was raised where the code awaited
            stopped = stopped.__context__ or stopped
    return FunctionTimedOut(f"{call.path} ran longer than {over}").with_traceback(stopped.__traceback__)


def innermost(frame: FrameType | None) -> tuple[Invocation | None, FrameType | None]:
    """The innermost function call on the stack `frame` tops, and the frame of its `run`."""
    while frame is not None:
        if frame.f_code is _RUN:
            found = frame.f_locals.get("invocation")
            return (found if isinstance(found, Invocation) else None), frame
        frame = frame.f_back
    return None, None


@lru_cache(maxsize=4096)
def _app_file(filename: str, app_dir: Path) -> bool:
    return is_app_file(filename, app_dir.resolve())


def app_frame(frame: FrameType | None, app_dir: Path, stop: FrameType | None = None) -> FrameType | None:
    """The innermost frame of app code on the stack `frame` tops, above `stop`."""
    while frame is not None and frame is not stop:
        if _app_file(frame.f_code.co_filename, app_dir):
            return frame
        frame = frame.f_back
    return None


def position(frame: FrameType | None, app_dir: Path | None = None, stop: FrameType | None = None) -> str:
    """Where the stack `frame` tops is: at its innermost line of app code (`functions/x.py:3 in
    f`), else at its top frame (`/full/path.py:3 in f`)."""
    found = app_frame(frame, app_dir, stop) if app_dir is not None else None
    shown = found or frame
    if shown is None:
        return "in the event loop's own code"
    code = shown.f_code
    name = Path(code.co_filename)
    if found is not None and app_dir is not None:
        for root in (app_dir, app_dir.resolve()):
            if name.is_relative_to(root):
                name = name.relative_to(root)
                break
    where = f"at {name}:{shown.f_lineno} in {code.co_name}"
    if found is None and name.parent.name == "asyncio" and code.co_name in _LOOP_FRAMES:
        return f"in C code the event loop called (no Python frame above {where.removeprefix('at ')})"
    return where


_LOOP_FRAMES = {"run", "run_forever", "run_until_complete", "_run_once", "_run"}  # asyncio's own


@dataclass(eq=False)
class Block:
    """One stretch of time the loop did not run, as the watchdog thread saw it."""

    beat: float  # the heartbeat it began after
    blocked: float = 0.0  # seconds counted so far
    holder: Invocation | None = None  # the function on the CPU at the last look
    held: float = 0.0  # seconds `holder` has held the loop (since it was first seen)
    where: str = ""  # where the loop thread was at the last look
    culprit: Invocation | None = None  # the function that held it longest, how long, and where
    culprit_held: float = 0.0
    culprit_where: str = ""
    other_where: str = ""  # where it was at the last look that found no function
    next_report: float = STILL_BLOCKED_AFTER
    seen: bool = True  # False: it ended before the watchdog could look


_active: Watchdog | None = None  # the one watchdog of this process (its signal handler's)


class Watchdog:
    """Watches the running event loop from a thread of its own (see the module doc). `start`
    and `stop` are called in the loop's thread; one watchdog per process at a time."""

    def __init__(self, warn_after: float, probe_after: float, record: Callable[[str, float], None]) -> None:
        self.warn_after = warn_after  # blocks at least this long are logged and counted; 0: none
        self.probe_after = probe_after  # a block this long by no function's frame: probe it
        self.record = record  # called in the loop thread with (kind or "other", seconds)
        self.beat = 0.0  # the last heartbeat (written by the loop thread)
        self.gap = (0.0, 0.0)  # the last two heartbeats further apart than STALE (loop thread)
        self.blocked = 0.0  # seconds the current block has lasted (written by the watchdog)
        # Written by the watchdog thread: what to interrupt (None: probe) in the block that began
        # after heartbeat `beat`. Written by the handler: what it found, and whether it raised.
        self.request: tuple[Invocation | None, float] | None = None
        self.probed: tuple[float, Invocation, str] | None = None  # (block, its owner, where)
        self.raised = -1.0  # the heartbeat of the last block the handler raised in
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_id = 0
        self._signals = False  # interrupting with SIGNAL (else PyThreadState_SetAsyncExc)
        self._previous: Any = None
        self._cpu_clock: int | None = None
        self._stopping = threading.Event()
        self._timer: asyncio.TimerHandle | None = None

    # -- the loop's thread --------------------------------------------------------------------

    def start(self) -> None:
        global _active
        if self._thread is not None:
            return
        if _active is not None:
            raise RuntimeError("another watchdog watches this process's event loop")
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._signals = threading.current_thread() is threading.main_thread() and self._take_signal()
        try:
            self._cpu_clock = time.pthread_getcpuclockid(self._thread_id)
        except (AttributeError, OSError):  # not on every platform: late looks then count CAP
            self._cpu_clock = None
        _active = self
        self._heartbeat()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._watch, name="ripple-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        global _active
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join()
        self._thread = None
        if self._timer is not None:
            self._timer.cancel()
        if self._signals:  # every signal sent was delivered: the thread that sent them is gone
            signal.signal(SIGNAL, self._previous)
        _active = None

    def _take_signal(self) -> bool:
        previous = signal.getsignal(SIGNAL)
        if previous not in (signal.SIG_DFL, signal.SIG_IGN, None, _on_signal):
            log.warning("%s has a handler already: functions holding the event loop are interrupted only "
                        "between bytecodes, not in blocking calls such as time.sleep", SIGNAL.name)
            return False
        self._previous = previous
        signal.signal(SIGNAL, _on_signal)
        return True

    def _heartbeat(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        if now - self.beat > STALE:
            self.gap = (self.beat, now)
        self.beat = now
        self._timer = self._loop.call_later(INTERVAL, self._heartbeat)

    def interrupts(self, frame: FrameType | None) -> bool:
        """In the loop thread (the signal handler): should the code running here be interrupted?"""
        request, beat = self.request, self.beat
        if request is None or request[1] != beat:  # nothing asked, or the loop has run since
            return False
        target = request[0]
        invocation, run_frame = innermost(frame)
        if target is not None or run_frame is not None:
            raised = target is not None and invocation is target
        else:  # a probe: is this a task some function started, running its code?
            owner = current.get()
            if owner is None:
                return False
            self.probed = (beat, owner, position(frame, owner.app_dir))
            raised = owner.over(self.blocked, time.monotonic()) and app_frame(frame, owner.app_dir) is not None
        if raised:
            self.raised = beat
        return raised

    # -- the watchdog's thread ----------------------------------------------------------------

    def _cpu(self) -> float:
        return time.clock_gettime(self._cpu_clock) if self._cpu_clock is not None else 0.0

    def _watch(self) -> None:
        loop = self._loop
        assert loop is not None
        block: Block | None = None
        seen = self.gap  # the last gap between two heartbeats accounted for
        last, last_cpu = time.monotonic(), self._cpu()
        while not self._stopping.wait(INTERVAL):
            if loop.is_closed():
                return
            now, cpu = time.monotonic(), self._cpu()
            counted = max(min(now - last, CAP), min(cpu - last_cpu, now - last))
            last, last_cpu = now, cpu
            beat, gap = self.beat, self.gap
            ended = None
            if block is not None and block.beat != beat:
                ended, block = block, None
            elif block is None and gap != seen:
                # A block that began and ended while this thread could not look: C code held the
                # GIL throughout, and the loop ran the heartbeat before letting go of it. What
                # the loop thread ran meanwhile (not a starved process) is the count.
                ended = Block(gap[0], blocked=counted, seen=False)
            seen = gap
            if ended is not None:
                ran = gap[1] if gap[0] == ended.beat else beat
                try:  # it lasted from when the heartbeat was due until the loop ran it
                    self._ended(ended, max(ended.blocked, ran - ended.beat - INTERVAL))
                except Exception:
                    log.exception("the watchdog failed to report a block of the event loop")
            if now - beat <= STALE or not loop.is_running():
                continue
            if block is None:  # it began about when the heartbeat was due
                block = Block(beat)
                counted = min(now - beat - INTERVAL / 2, counted + STALE)
            try:
                self._look(block, counted, now)
            except Exception:  # a bug here must not end the watch
                log.exception("the watchdog failed to look at the event loop's thread")

    def _look(self, block: Block, counted: float, now: float) -> None:
        frame = sys._current_frames().get(self._thread_id)
        block.blocked = self.blocked = block.blocked + counted
        if frame is not None and frame.f_code is _HEARTBEAT:  # over: C code held the GIL until now
            block.seen = block.seen and bool(block.where)
            return
        invocation, run_frame = innermost(frame)
        if invocation is not block.holder:
            block.holder, block.held = invocation, 0.0
        block.held += counted
        block.where = position(frame, invocation.app_dir if invocation else None, run_frame)
        if invocation is None:
            block.other_where = block.where
        elif block.held >= block.culprit_held:
            block.culprit, block.culprit_held, block.culprit_where = invocation, block.held, block.where
        if invocation is not None:
            if invocation.over(block.held, now):
                self._interrupt(invocation, block)
        elif self._signals and block.blocked >= self.probe_after:
            self._interrupt(None, block)
        if self.warn_after and block.blocked >= block.next_report:
            who = f"{invocation} has held the event loop" if invocation else "the event loop has been blocked"
            log.warning("%s for %.1f s so far, %s", who, block.blocked, block.where)
            block.next_report += STILL_BLOCKED_EVERY

    def _interrupt(self, invocation: Invocation | None, block: Block) -> None:
        self.request = (invocation, block.beat)
        try:
            if self._signals:
                signal.pthread_kill(self._thread_id, SIGNAL)
            elif invocation is not None:
                _set_async_exc(self._thread_id)
        except OSError:  # the thread is gone
            pass

    def _ended(self, block: Block, lasted: float) -> None:
        """Report a block: whether by what was counted (never a starved process), how long by the
        wall clock (what the clients waited)."""
        if not self.warn_after or block.blocked < self.warn_after:
            return
        probed = self.probed if self.probed is not None and self.probed[0] == block.beat else None
        # A function is to blame when it held the loop for most of the block.
        culprit = block.culprit if block.culprit_held >= block.blocked / 2 else None
        interrupted = "; interrupted" if self.raised == block.beat else ""
        if culprit is not None:
            log.warning("%s held the event loop for %.2f s, %s%s", culprit, lasted, block.culprit_where, interrupted)
        elif probed is not None:
            culprit = probed[1]
            log.warning("the event loop was blocked for %.2f s by a task of %s, %s%s", lasted, culprit, probed[2],
                        interrupted)
        elif not block.seen:
            log.warning("the event loop was blocked for %.2f s by a call into C code that held the GIL "
                        "throughout: the watchdog could not see whose", lasted)
        else:
            log.warning("the event loop was blocked for %.2f s outside any function, %s", lasted, block.other_where)
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self.record, culprit.kind if culprit else "other", lasted)
        except RuntimeError:  # the loop is closed
            pass


_HEARTBEAT = Watchdog._heartbeat.__code__


def _on_signal(signum: int, frame: FrameType | None) -> None:
    watchdog = _active
    if watchdog is not None and watchdog.interrupts(frame):
        raise Runaway


def _set_async_exc(thread_id: int) -> None:
    """Raise Runaway in another thread at its next bytecode (the fallback off the main thread)."""
    set_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    if set_exc(ctypes.c_ulong(thread_id), ctypes.py_object(Runaway)) > 1:  # cannot happen; undo
        set_exc(ctypes.c_ulong(thread_id), None)
