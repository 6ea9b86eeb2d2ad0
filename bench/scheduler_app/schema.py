"""Schema of the scheduler benchmark app (bench/scheduler.py): no tables of its own; the jobs live
in the `_scheduled_functions` system table."""

from server import Schema

schema = Schema()
