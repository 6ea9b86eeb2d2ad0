"""Schema of the fan-out benchmark app (bench/fanout.py): one small table with one index."""

from pydantic import BaseModel

from server import Schema, Table


class Counter(BaseModel):
    name: str
    value: int


schema = Schema(counters=Table(Counter, indexes={"by_name": ["name"]}))
