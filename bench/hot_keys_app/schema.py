"""Schema of the hot-keys benchmark app (bench/hot_keys.py): engagement counters by name."""

from pydantic import BaseModel

from server import Schema, Table


class Counter(BaseModel):
    name: str
    count: int


schema = Schema(counters=Table(Counter, indexes={"by_name": ["name"]}))
