"""Schema of the abuse benchmark app (bench/abuse.py): counters, one index by name.

Written only against the public `server` API of the oldest tree the benchmark compares, so that
every tree loads it."""

from pydantic import BaseModel

from server import Schema, Table


class Counter(BaseModel):
    name: str
    value: int


schema = Schema(counters=Table(Counter, indexes={"by_name": ["name"]}))
