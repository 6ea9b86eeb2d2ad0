"""Schema of the file storage test app (tests/test_storage.py, tests/js/storage.test.mjs)."""

from pydantic import BaseModel

from server import Id, Schema, Table


class Attachment(BaseModel):
    name: str
    file: Id["_storage"]


schema = Schema(attachments=Table(Attachment), notes=Table())
