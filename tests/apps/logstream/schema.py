"""Schema of the log-stream test app (tests/test_logs.py)."""

from pydantic import BaseModel

from server import Schema, Table


class Note(BaseModel):
    text: str


schema = Schema(notes=Table(Note))
