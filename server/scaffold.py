"""`ripple init [DIR]`: a new app to start from: a schema, a module of functions, a README and a
.gitignore. It never overwrites: a directory that already holds any of them is refused."""

from __future__ import annotations

import sys
from pathlib import Path

SCHEMA = '''"""The app's tables: each a pydantic model, with indexes (docs/schema.md)."""

from pydantic import BaseModel

from server import Schema, SearchIndex, Table


class Message(BaseModel):
    author: str
    body: str


schema = Schema(
    messages=Table(
        Message,
        indexes={"by_author": ["author"]},
        search_indexes={"search_body": SearchIndex(search_field="body")},
    ),
)
'''

MESSAGES = '''"""Functions of `messages`: called as "messages:latest", "messages:send", ... (docs/functions.md)."""

from server import mutation, query


@query
async def latest(ctx, limit: int = 50) -> list[dict]:
    """The newest messages first; a live query for subscribed clients."""
    return await ctx.db.query("messages").order("desc").take(limit)


@query
async def search(ctx, text: str) -> list[dict]:
    """Messages whose body best matches `text` (docs/search.md)."""
    return await ctx.db.query("messages").with_search_index("search_body", lambda q: q.search("body", text)).take(10)


@mutation
async def send(ctx, author: str, body: str) -> str:
    if not body.strip():
        raise ValueError("a message needs a body")
    return await ctx.db.insert("messages", {"author": author, "body": body})
'''

README = '''# {name}

A Ripple app: `schema.py` holds the tables, `functions/` the queries,
mutations and actions clients call.

    ripple dev                                        # serve on http://127.0.0.1:3210, reload on change
    ripple run messages:send '{{"author": "ann", "body": "hello"}}'
    ripple run messages:latest

Any Convex client works against it (npm `convex`, PyPI `convex`): point it at the URL `ripple dev`
prints.
'''

GITIGNORE = """.ripple/
__pycache__/
.venv/
"""


class AppExists(Exception):
    """The directory already holds an app (or part of one)."""


def create_app(directory: Path) -> list[Path]:
    """Write a new app into `directory` (made if missing); the files written."""
    files = {
        directory / "schema.py": SCHEMA,
        directory / "functions" / "messages.py": MESSAGES,
        directory / "README.md": README.format(name=directory.resolve().name or "app"),
        directory / ".gitignore": GITIGNORE,
    }
    present = [p for p in [*files, directory / "functions"] if p.exists()]
    if present:
        names = ", ".join(str(p) for p in present)
        raise AppExists(f"{directory} already holds {names}; ripple init writes a new app into an empty directory")
    (directory / "functions").mkdir(parents=True)
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def init_command(directory: Path) -> int:
    """`ripple init DIR`: the files written, or why not; the exit status."""
    try:
        written = create_app(directory)
    except AppExists as exc:
        print(f"ripple init: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    where = "" if directory == Path(".") else f"cd {directory} && "
    print(f"next: {where}ripple dev")
    return 0
