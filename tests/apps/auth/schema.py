from pydantic import BaseModel

from server import Schema, Table


class Note(BaseModel):
    owner: str  # the writer's tokenIdentifier
    text: str


class Seen(BaseModel):
    label: str
    who: str | None  # the tokenIdentifier a scheduled function ran as


schema = Schema(notes=Table(Note, indexes={"by_owner": ["owner"]}), seen=Table(Seen, indexes={"by_label": ["label"]}))
