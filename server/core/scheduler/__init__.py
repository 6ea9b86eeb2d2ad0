"""Scheduled functions and crons, in four modules, one per role (lowest layer first):

    crons.py  `Crons`: what app code declares in functions/crons.py, and schedule arithmetic
    table.py  the `_scheduled_functions` and `_cron_jobs` tables: every state change of a job
              or a cron, inside a transaction its caller owns
    api.py    `ctx.scheduler` for mutations and actions (run_after, run_at, cancel)
    loop.py   the per-process loop that claims and runs due jobs and ticks crons (above the
              Runtime, which runs the functions)

See docs/scheduler.md and docs/internals.md (Layers).
"""
