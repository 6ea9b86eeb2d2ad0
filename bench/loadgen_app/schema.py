"""Schema of the Convex load-generator scenarios (bench/loadgen.py).

`points` is bench/app's table (same fields, same index), so that bench/http_api.py's raw asyncpg
baseline runs its very SQL against it. `messages` is shaped like the `messages` table of Convex's
npm-packages/scenario-runner: a channel, a random number and an index on both."""

from pydantic import BaseModel

from server import Schema, Table


class Point(BaseModel):
    key: str
    value: int


class Message(BaseModel):
    channel: str
    rand: int
    timestamp: float
    body: str


schema = Schema(
    points=Table(Point, indexes={"by_key": ["key"]}),
    messages=Table(Message, indexes={"by_channel_rand": ["channel", "rand"]}),
)
