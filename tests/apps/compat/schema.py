"""The app the Convex-compatibility suites (tests/test_compat_*.py) drive with each client family:
one function per behaviour of issue 10 that a ported Convex app relies on."""

from pydantic import BaseModel

from server import Schema, Table


class Note(BaseModel):
    title: str
    body: str


schema = Schema(
    notes=Table(Note),
    loose=Table(),
    counters=Table(indexes={"by_name": ["name"]}),
)
