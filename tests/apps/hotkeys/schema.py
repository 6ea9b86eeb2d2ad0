"""Schema of the hot-key queue tests (tests/test_hot_keys.py): counters by name."""

from pydantic import BaseModel

from server import Schema, Table


class Counter(BaseModel):
    name: str
    value: int


schema = Schema(counters=Table(Counter, indexes={"by_name": ["name"]}))
