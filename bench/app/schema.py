"""Schema of the HTTP API benchmark app (bench/http_api.py): one small table with one index."""

from pydantic import BaseModel

from server import Schema, Table


class Point(BaseModel):
    key: str
    value: int


schema = Schema(points=Table(Point, indexes={"by_key": ["key"]}))
