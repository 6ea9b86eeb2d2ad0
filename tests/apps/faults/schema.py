"""Schema of the fault-injection test app (tests/test_connection_faults.py)."""

from pydantic import BaseModel

from server import Schema, Table


class Mark(BaseModel):
    key: str


schema = Schema(marks=Table(Mark, indexes={"by_key": ["key"]}))
