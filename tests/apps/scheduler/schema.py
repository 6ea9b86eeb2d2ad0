"""Schema of the scheduler test app (tests/test_scheduler.py)."""

from pydantic import BaseModel

from server import Schema, Table


class Counter(BaseModel):
    key: str
    value: int


schema = Schema(counters=Table(Counter, indexes={"by_key": ["key"]}))
