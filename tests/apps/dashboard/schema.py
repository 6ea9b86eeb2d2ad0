"""Schema of the app tests/test_dashboard_browser.py opens in the dashboard."""

from pydantic import BaseModel

from server import Int64, Schema, Table


class Message(BaseModel):
    author: str
    body: str
    likes: Int64 | None = None


schema = Schema(messages=Table(Message, indexes={"by_author": ["author"]}))
