"""Schema of the test app used by most tests."""

from pydantic import BaseModel

from server import Int64, Schema, Table


class Counter(BaseModel):
    name: str
    value: int


class Message(BaseModel):
    author: str
    body: str
    big: Int64 | None = None
    blob: bytes | None = None


class Pair(BaseModel):
    left: int
    right: int


schema = Schema(
    counters=Table(Counter, indexes={"by_name": ["name"]}),
    items=Table(indexes={"by_a": ["a"], "by_a_b": ["a", "b"], "by_n": ["n"]}),
    messages=Table(Message, indexes={"by_author": ["author"]}),
    pairs=Table(Pair),
)
