"""A cron for the dashboard's Schedules section to list."""

from server import Crons

crons = Crons()
crons.interval("prune messages", hours=1, fn="messages:prune", args={"keep": 100})
