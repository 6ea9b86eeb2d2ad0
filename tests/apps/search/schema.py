"""The search test app: messages searched by body within a channel; docs searched by vector
within a genre; loose documents (no model) for vectors of every shape."""

from pydantic import BaseModel

from server import Schema, SearchIndex, Table, VectorIndex


class Message(BaseModel):
    body: str
    channel: str
    author: str = "ann"


class Note(BaseModel):
    text: str


class Doc(BaseModel):
    embedding: list[float]
    genre: str


schema = Schema(
    messages=Table(
        Message,
        indexes={"by_channel": ["channel"]},
        search_indexes={"search_body": SearchIndex(search_field="body", filter_fields=["channel", "author"])},
    ),
    notes=Table(Note),
    docs=Table(
        Doc,
        indexes={"by_genre": ["genre"]},
        vector_indexes={"by_embedding": VectorIndex(vector_field="embedding", dimensions=8, filter_fields=["genre"])},
    ),
    loose=Table(vector_indexes={"by_v": {"vectorField": "v", "dimensions": 3, "filterFields": ["tag"]}}),
)
