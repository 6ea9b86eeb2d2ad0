"""Schema of the import/export test app (tests/test_import_export.py)."""

from typing import Literal

from pydantic import BaseModel

from server import Id, Int64, Schema, SearchIndex, Table, VectorIndex


class Author(BaseModel):
    name: str
    age: float


class Message(BaseModel):
    body: str
    channel: str


class Point(BaseModel):
    embedding: list[float]
    kind: str


class Post(BaseModel):
    author: Id[Literal["authors"]]
    title: str
    likes: Int64 | None = None
    data: bytes | None = None
    file: Id[Literal["_storage"]] | None = None


schema = Schema(
    authors=Table(Author, indexes={"by_name": ["name"]}),
    posts=Table(Post, indexes={"by_author": ["author"]}),
    notes=Table(),  # any document
    messages=Table(Message, search_indexes={"search_body": SearchIndex(search_field="body", filter_fields=["channel"])}),
    points=Table(Point, vector_indexes={"by_embedding": VectorIndex(vector_field="embedding", dimensions=3,
                                                                      filter_fields=["kind"])}),
)
