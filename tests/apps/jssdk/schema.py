"""The app the JS SDK's tests (tests/js/sdk.test.mjs) drive: chat messages in rooms, ordered
by a number the test picks (so a test can insert into the middle of a loaded page), counters
(to count how many times a mutation ran), and stored values (int64 and bytes round trips)."""

from pydantic import BaseModel

from server import Schema, Table


class Message(BaseModel):
    room: str
    n: int
    body: str


class Counter(BaseModel):
    name: str
    value: int


schema = Schema(
    messages=Table(Message, indexes={"by_room_n": ["room", "n"]}),
    counters=Table(Counter, indexes={"by_name": ["name"]}),
    stored=Table(),
)
