"""Crons of the scheduler test app; only defined when SCHED_TEST_CRONS is set, so that tests
about waking do not see cron ticks."""

import os

from functions import jobs
from server import Crons

crons = Crons()

if os.environ.get("SCHED_TEST_CRONS"):
    crons.interval("tick", seconds=float(os.environ.get("SCHED_TEST_TICK", "1")), fn=jobs.cron_tick)
    crons.interval("slow", seconds=float(os.environ.get("SCHED_TEST_TICK", "1")), fn="jobs:cron_slow",
                   args={"ms": float(os.environ.get("SCHED_TEST_SLOW_MS", "2500"))})
