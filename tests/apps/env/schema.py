"""Schema of the environment-variable test app (tests/test_env.py)."""

from pydantic import BaseModel

from server import Schema, Table


class Seen(BaseModel):
    name: str
    value: str | None


schema = Schema(seen=Table(Seen))
