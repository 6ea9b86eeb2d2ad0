"""Crons: recurring scheduled functions declared in `functions/crons.py`.

    from server import Crons
    from functions import reports

    crons = Crons()
    crons.interval("flush", minutes=5, fn=reports.flush)
    crons.cron("digest", "0 8 * * 1-5", fn="reports:digest", args={"kind": "daily"})
    crons.daily("cleanup", hour_utc=3, minute_utc=0, fn=reports.cleanup)

This module is what app code sees: the definitions and the schedule arithmetic (times are UTC).
Running them is the scheduler's (server/core/scheduler/table.py: the `_cron_jobs` table).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from croniter import croniter

from server.core.registry import FunctionDef
from server.core.values import to_convex_json
from server.errors import RippleUsageError

DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


# -- schedules ------------------------------------------------------------------------------------

def next_run(schedule: Mapping[str, Any], now_ms: float, previous_ms: float | None = None) -> float:
    """The first tick strictly after `now_ms`. Intervals keep their grid from the previous tick
    (missed ticks are not made up: one run, then the grid continues); a new interval cron first
    runs one interval after it was registered."""
    if schedule["kind"] == "interval":
        step = float(schedule["seconds"]) * 1000.0
        if previous_ms is None:
            return now_ms + step
        behind = max(0.0, now_ms - previous_ms)
        return previous_ms + (math.floor(behind / step) + 1) * step
    start = dt.datetime.fromtimestamp(max(now_ms, previous_ms or 0.0) / 1000.0, dt.UTC)
    return float(croniter(schedule["expression"], start).get_next(float)) * 1000.0


def _check_int(what: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RippleUsageError(f"{what} must be an integer from {lo} to {hi}, not {value!r}")
    return value


@dataclass(frozen=True)
class CronDef:
    name: str
    schedule: dict[str, Any]
    fn: FunctionDef | str
    args: dict[str, Any]


class Crons:
    """The crons of an app: define `crons = Crons()` in `functions/crons.py`."""

    def __init__(self) -> None:
        self.jobs: dict[str, CronDef] = {}

    def _add(self, name: str, schedule: dict[str, Any], fn: FunctionDef | str, args: Mapping[str, Any] | None) -> None:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise RippleUsageError(f"a cron needs a non-empty name (up to 200 characters), not {name!r}")
        if name in self.jobs:
            raise RippleUsageError(f"two crons are named {name!r}")
        if not isinstance(fn, (FunctionDef, str)):
            raise RippleUsageError(f"cron {name!r}: fn must be a function reference or a 'module:function' path")
        if args is not None and not isinstance(args, Mapping):
            raise RippleUsageError(f"cron {name!r}: args must be a dict")
        plain = dict(args or {})
        to_convex_json(plain, f"cron {name} args")
        self.jobs[name] = CronDef(name, schedule, fn, plain)

    def interval(self, name: str, *, seconds: float = 0, minutes: float = 0, hours: float = 0,
                 fn: FunctionDef | str, args: Mapping[str, Any] | None = None) -> None:
        """Run `fn` every `hours + minutes + seconds`."""
        total = float(seconds) + 60.0 * float(minutes) + 3600.0 * float(hours)
        if not math.isfinite(total) or total <= 0:
            raise RippleUsageError(f"cron {name!r}: the interval must be positive (got {total:g} s)")
        self._add(name, {"kind": "interval", "seconds": total}, fn, args)

    def cron(self, name: str, expression: str, *, fn: FunctionDef | str, args: Mapping[str, Any] | None = None) -> None:
        """Run `fn` on a 5-field cron expression (minute hour day-of-month month day-of-week, UTC)."""
        if not isinstance(expression, str) or len(expression.split()) != 5 or not croniter.is_valid(expression):
            raise RippleUsageError(
                f"cron {name!r}: {expression!r} is not a 5-field cron expression "
                "(minute hour day-of-month month day-of-week, e.g. '*/5 * * * *')"
            )
        self._add(name, {"kind": "cron", "expression": " ".join(expression.split())}, fn, args)

    def hourly(self, name: str, *, minute_utc: int, fn: FunctionDef | str, args: Mapping[str, Any] | None = None) -> None:
        minute = _check_int("minute_utc", minute_utc, 0, 59)
        self.cron(name, f"{minute} * * * *", fn=fn, args=args)

    def daily(self, name: str, *, hour_utc: int, minute_utc: int, fn: FunctionDef | str,
              args: Mapping[str, Any] | None = None) -> None:
        minute, hour = _check_int("minute_utc", minute_utc, 0, 59), _check_int("hour_utc", hour_utc, 0, 23)
        self.cron(name, f"{minute} {hour} * * *", fn=fn, args=args)

    def weekly(self, name: str, *, day_of_week: str, hour_utc: int, minute_utc: int, fn: FunctionDef | str,
               args: Mapping[str, Any] | None = None) -> None:
        if not isinstance(day_of_week, str) or day_of_week.lower() not in DAYS:
            raise RippleUsageError(f"day_of_week must be one of {', '.join(DAYS)}, not {day_of_week!r}")
        minute, hour = _check_int("minute_utc", minute_utc, 0, 59), _check_int("hour_utc", hour_utc, 0, 23)
        self.cron(name, f"{minute} {hour} * * {DAYS.index(day_of_week.lower())}", fn=fn, args=args)

    def monthly(self, name: str, *, day: int, hour_utc: int, minute_utc: int, fn: FunctionDef | str,
                args: Mapping[str, Any] | None = None) -> None:
        minute, hour = _check_int("minute_utc", minute_utc, 0, 59), _check_int("hour_utc", hour_utc, 0, 23)
        self.cron(name, f"{minute} {hour} {_check_int('day', day, 1, 31)} * *", fn=fn, args=args)


def app_crons(modules: Mapping[str, ModuleType]) -> Crons:
    """The `crons` defined in the app's `functions/crons.py` (none: an empty set)."""
    module = modules.get("crons")
    found = getattr(module, "crons", None) if module is not None else None
    if module is not None and not isinstance(found, Crons):
        raise RippleUsageError("functions/crons.py must define `crons = Crons()` (from server import Crons)")
    return found if isinstance(found, Crons) else Crons()
