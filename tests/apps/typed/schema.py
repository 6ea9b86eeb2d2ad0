"""Schema of the app that tests Convex-style validation: strict numbers and typed ids."""

from pydantic import BaseModel

from server import Id, Schema, Table


class User(BaseModel):
    name: str


class Video(BaseModel):
    title: str
    owner: Id["users"]  # noqa: F821 (type checkers read "users" as a forward reference)
    views: int = 0
    score: float = 0.0
    tags: list[int] = []


schema = Schema(
    users=Table(User),
    videos=Table(Video, indexes={"by_owner": ["owner"]}),
    notes=Table(),  # no model: any object
)
