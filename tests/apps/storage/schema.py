"""Schema of the file storage test app (tests/test_storage.py, tests/js/storage.test.mjs)."""

from typing import Literal

from pydantic import BaseModel

from server import Id, Schema, Table


class Attachment(BaseModel):
    name: str
    file: Id[Literal["_storage"]]


schema = Schema(attachments=Table(Attachment), notes=Table())
