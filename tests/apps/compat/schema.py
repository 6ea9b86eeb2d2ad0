"""The app the Convex-compatibility suites (tests/test_compat_*.py) drive with each client family:
one function per behaviour of issue 10 that a ported Convex app relies on."""

from pydantic import BaseModel

from server import Schema, Table


class Note(BaseModel):
    title: str
    body: str
    note: str | None = None  # optional: absent when not given


schema = Schema(
    notes=Table(Note, indexes={"by_note": ["note"]}),
    loose=Table(),
    counters=Table(indexes={"by_name": ["name"]}),
)
