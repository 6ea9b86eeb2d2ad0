"""Schema of the text-search benchmark app (bench/search.py): messages searched by body, filtered
by channel."""

from pydantic import BaseModel

from server import Schema, SearchIndex, Table


class Message(BaseModel):
    body: str
    channel: str


schema = Schema(
    messages=Table(Message, search_indexes={"search_body": SearchIndex(search_field="body", filter_fields=["channel"])}),
)
