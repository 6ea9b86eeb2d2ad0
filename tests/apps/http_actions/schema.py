"""Schema of the HTTP actions test app (tests/test_http_actions.py)."""

from pydantic import BaseModel

from server import Schema, Table


class Note(BaseModel):
    text: str


class Webhook(BaseModel):
    webhook_id: str
    event: str


schema = Schema(notes=Table(Note), webhooks=Table(Webhook, indexes={"by_webhook_id": ["webhook_id"]}))
