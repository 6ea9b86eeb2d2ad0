"""The example app's crons (UTC). See docs/scheduler.md."""

from functions import processing
from server import Crons

crons = Crons()

crons.interval("requeue stuck videos", minutes=10, fn=processing.requeue_stuck)
