"""The search test app: messages searched by body within a channel."""

from pydantic import BaseModel

from server import Schema, SearchIndex, Table


class Message(BaseModel):
    body: str
    channel: str
    author: str = "ann"


class Note(BaseModel):
    text: str


schema = Schema(
    messages=Table(
        Message,
        indexes={"by_channel": ["channel"]},
        search_indexes={"search_body": SearchIndex(search_field="body", filter_fields=["channel", "author"])},
    ),
    notes=Table(Note),
)
