"""Validation as Convex's validators do it (no coercion, integral floats for `int`, validated
defaults), typed ids (`Id["table"]`), the built-in `by_id` index and `ctx.db` calls addressed by
`(table, id)`: through the runtime, over HTTP, and from the official PyPI client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel

from client_sdk import RippleClient
from server import Id, Schema, Table, mutation, query
from server.core.ids import new_id
from server.core.runtime import Runtime
from server.errors import (
    ArgumentValidationError,
    FunctionFailure,
    InvalidIdError,
    RippleUsageError,
    SchemaError,
)

from conftest import APPS, ServerProcess, Watcher, open_runtime, until

TYPED_APP = APPS / "typed"


@pytest.fixture
async def rt(namespace: str) -> AsyncIterator[Runtime]:
    async with open_runtime(TYPED_APP, namespace) as runtime:
        yield runtime


async def run(rt: Runtime, kind: str, path: str, args: dict[str, Any]) -> Any:
    return (await rt.call(kind, path, args)).value  # type: ignore[arg-type]


async def failure(rt: Runtime, kind: str, path: str, args: dict[str, Any]) -> str:
    """The message a failing call reports (a caller error or the function's own)."""
    with pytest.raises((RippleUsageError, FunctionFailure)) as err:
        await run(rt, kind, path, args)
    return err.value.message if isinstance(err.value, FunctionFailure) else str(err.value)


async def test_numbers_are_taken_as_convex_numbers_and_nothing_is_coerced(rt: Runtime) -> None:
    # Clients send every number as a float64: 2.0 is the integer 2; an int is a float's value.
    assert await run(rt, "query", "typed:numbers", {"n": 2.0, "x": 2}) == ["2", "2.0", "None", "None"]
    assert await run(rt, "query", "typed:numbers", {"n": -(2.0**53), "x": 0.5, "counts": {"a": 3.0}}) == [
        str(-(2**53)), "0.5", "{'a': 3}", "None"]
    refused = [
        ({"n": "5", "x": 1}, "`n`: Input should be a valid integer (got '5')"),
        ({"n": 2.5, "x": 1}, "`n`: Input should be a valid integer (got 2.5)"),
        ({"n": True, "x": 1}, "`n`: Input should be a valid integer (got True)"),
        ({"n": 2.0**53 + 2, "x": 1}, "`n`: Input should be a valid integer"),
        ({"n": 1, "x": "2"}, "`x`: Input should be a valid number (got '2')"),
        ({"n": 1, "x": False}, "`x`: Input should be a valid number (got False)"),
        ({"n": 1, "x": 1, "counts": {"a": "1"}}, "`counts.a`: Input should be a valid integer (got '1')"),
        ({"n": 1, "x": 1, "flags": ["true"]}, "`flags[0]`: Input should be a valid boolean (got 'true')"),
        ({"n": 1, "x": 1, "flags": [1]}, "`flags[0]`: Input should be a valid boolean (got 1)"),
    ]
    for args, expected in refused:
        with pytest.raises(ArgumentValidationError) as err:
            await run(rt, "query", "typed:numbers", args)
        assert expected in str(err.value), (args, str(err.value))


async def test_a_missing_field_is_named_without_repeating_the_input(rt: Runtime) -> None:
    with pytest.raises(ArgumentValidationError) as err:
        await run(rt, "query", "typed:numbers", {"counts": {"a": 1, "b": 2}})
    message = str(err.value)
    assert message == "invalid arguments for typed:numbers: `n`: Field required; `x`: Field required"
    user = await run(rt, "mutation", "typed:add_user", {"name": "ann"})
    message = await failure(rt, "mutation", "typed:insert", {"table": "videos", "doc": {"owner": user, "views": 1}})
    assert "`title`: Field required" in message and "got" not in message and user not in message


async def test_documents_are_validated_strictly(rt: Runtime) -> None:
    user = await run(rt, "mutation", "typed:add_user", {"name": "ann"})
    video = await run(rt, "mutation", "typed:insert", {"table": "videos", "doc": {
        "title": "t", "owner": user, "views": 2.0, "score": 3, "tags": [1.0, 2]}})
    stored = await run(rt, "query", "typed:get", {"table": "videos", "id": video})
    assert (stored["views"], stored["score"], stored["tags"]) == (2, 3.0, [1, 2])
    assert type(stored["views"]) is int and type(stored["score"]) is float
    for doc, expected in [
        ({"views": "5"}, "`views`: Input should be a valid integer (got '5')"),
        ({"views": 1.5}, "`views`: Input should be a valid integer (got 1.5)"),
        ({"score": "1.5"}, "`score`: Input should be a valid number (got '1.5')"),
        ({"tags": ["1"]}, "`tags[0]`: Input should be a valid integer (got '1')"),
        ({"title": 5}, "`title`: Input should be a valid string (got 5)"),
    ]:
        message = await failure(rt, "mutation", "typed:insert", {
            "table": "videos", "doc": {"title": "t", "owner": user, **doc}})
        assert "table `videos` does not match Video" in message and expected in message, message
    # A patch is validated too, and a failed one changes nothing.
    message = await failure(rt, "mutation", "typed:patch_in", {"table": "videos", "id": video, "fields": {"views": "7"}})
    assert f"table `videos`, document {video}" in message and "`views`" in message
    assert (await run(rt, "query", "typed:get", {"table": "videos", "id": video}))["views"] == 2


async def test_typed_ids_in_arguments_returns_and_documents(rt: Runtime) -> None:
    user = await run(rt, "mutation", "typed:add_user", {"name": "ann"})
    video = await run(rt, "mutation", "typed:add_video", {"owner": user, "title": "a"})
    assert await run(rt, "query", "typed:by_owner", {"owner": user}) == ["a"]
    # A value of the wrong table, an id of no table of this deployment, a string that is no id.
    unknown = new_id(4000)
    for args, expected in [
        ({"owner": video, "title": "b"}, '`owner`: Found an id of table videos, which does not match table users (Id["users"])'),
        ({"owner": unknown, "title": "b"}, "`owner`: Input should be an id of table users"),
        ({"owner": "ann", "title": "b"}, "`owner`: Input should be an id of table users (Id[\"users\"]) (got 'ann')"),
        ({"owner": 5, "title": "b"}, "`owner`: Input should be a valid string (got 5)"),
    ]:
        with pytest.raises(ArgumentValidationError) as err:
            await run(rt, "mutation", "typed:add_video", args)
        assert expected in str(err.value), str(err.value)
    with pytest.raises(ArgumentValidationError, match=r"`owner`: Found an id of table videos"):
        await run(rt, "query", "typed:by_owner", {"owner": video})  # an args= model with an Id field
    # Returns: the declared Id type judges what the function returned.
    assert await run(rt, "query", "typed:echo_video_id", {"id": video}) == video
    message = await failure(rt, "query", "typed:echo_video_id", {"id": user})
    assert 'Found an id of table users, which does not match table videos (Id["videos"])' in message
    # Documents: a schema field typed Id["users"] refuses a video's id.
    message = await failure(rt, "mutation", "typed:insert", {"table": "videos", "doc": {"title": "c", "owner": video}})
    assert "table `videos` does not match Video: `owner`: Found an id of table videos" in message
    assert [d["owner"] for d in [await run(rt, "query", "typed:get", {"table": "videos", "id": video})]] == [user]


def test_ids_are_checked_for_shape_without_a_deployment() -> None:
    """With no table names at hand (validation outside a runtime), an Id is checked to be a
    well-formed id: no database is needed to refuse a non-id."""

    @query
    async def one(ctx: Any, video: Id[Literal["videos"]]) -> None: ...

    video = new_id(3)
    assert one.validate_args({"video": video}) == {"video": video}
    with pytest.raises(ArgumentValidationError, match=r"`video`: Input should be an id of table videos"):
        one.validate_args({"video": "x" * 32})
    assert Id["videos"] == Id[Literal["videos"]]  # type: ignore[misc]  # the plain spelling too
    with pytest.raises(TypeError, match=r'Id\[\.\.\.\] takes a table name, as in Id\["videos"\], not 5'):
        Id[5]  # type: ignore[misc]


def test_invalid_defaults_are_refused_when_defined() -> None:
    with pytest.raises(TypeError, match=r"invalid default: `limit`: Input should be a valid integer \(got None\)"):
        @query
        async def listing(ctx: Any, limit: int = None) -> None: ...  # type: ignore[assignment]  # noqa: RUF013

    class Opts(BaseModel):
        tags: list[int] = ["a"]

    with pytest.raises(TypeError, match=r"invalid default: `tags\[0\]`: Input should be a valid integer \(got 'a'\)"):
        mutation(args=Opts)(_noop)

    class Post(BaseModel):
        views: int = "0"  # type: ignore[assignment]

    with pytest.raises(SchemaError, match=r"table posts: model Post: invalid default: `views`: .*valid integer \(got '0'\)"):
        Schema(posts=Table(Post))


async def _noop(ctx: Any, args: Any) -> None: ...


async def test_an_invalid_default_fails_the_app_load_with_file_and_line(tmp_path: Any, namespace: str) -> None:
    from server.errors import AppLoadError

    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "bad.py").write_text(
        "from server import query\n\n@query\nasync def f(ctx, n: int = 'x') -> int:\n    return n\n")
    with pytest.raises(AppLoadError, match=r"functions/bad\.py:3: TypeError: f: invalid default: `n`"):
        async with open_runtime(tmp_path, namespace):
            pass


async def test_the_built_in_by_id_index(rt: Runtime) -> None:
    user = await run(rt, "mutation", "typed:add_user", {"name": "ann"})
    videos = [await run(rt, "mutation", "typed:add_video", {"owner": user, "title": str(i)}) for i in range(5)]
    ids = sorted(videos)
    assert (await run(rt, "query", "typed:by_id", {"id": videos[2]}))["title"] == "2"
    assert await run(rt, "query", "typed:all_by_id", {}) == ids
    assert await run(rt, "query", "typed:all_by_id", {"order": "desc"}) == ids[::-1]
    assert await run(rt, "query", "typed:ids_after", {"id": ids[1]}) == ids[2:]
    assert await run(rt, "query", "typed:ids_after", {"id": ids[1], "order": "desc"}) == ids[:1:-1]
    seen: list[str] = []
    cursor = None
    while True:
        page = await run(rt, "query", "typed:page_by_id", {"cursor": cursor, "n": 2})
        seen += [d["_id"] for d in page["page"]]
        if page["isDone"]:
            break
        cursor = page["continueCursor"]
    assert seen == ids
    await run(rt, "mutation", "typed:remove", {"table": "videos", "id": videos[2]})
    assert await run(rt, "query", "typed:by_id", {"id": videos[2]}) is None
    message = await failure(rt, "query", "typed:ids_after", {"id": user})
    assert f"index videos.by_id: {user!r} is not an id of table videos" in message


async def test_db_calls_addressed_by_table_and_id(rt: Runtime) -> None:
    user = await run(rt, "mutation", "typed:add_user", {"name": "ann"})
    video = await run(rt, "mutation", "typed:add_video", {"owner": user, "title": "a", "views": 3})
    renamed = await run(rt, "mutation", "typed:rename", {"id": video, "title": "b"})
    assert (renamed["title"], renamed["views"]) == ("b", 3)
    reset = await run(rt, "mutation", "typed:reset", {"id": video})
    assert (reset["title"], reset["views"], reset["owner"]) == ("b", 0, user)
    assert (await run(rt, "query", "typed:get", {"table": "users", "id": user}))["name"] == "ann"
    # The table named must be the id's.
    message = await failure(rt, "query", "typed:get", {"table": "videos", "id": user})
    assert f"ctx.db.get('videos', {user!r}): the id is a document of table users, not videos" in message
    for verb, args in [("remove", {"table": "users", "id": video}),
                       ("patch_in", {"table": "users", "id": video, "fields": {"name": "x"}})]:
        message = await failure(rt, "mutation", f"typed:{verb}", args)
        assert "the id is a document of table videos, not users" in message, message
    message = await failure(rt, "mutation", "typed:remove", {"table": "nosuch", "id": video})
    assert "table 'nosuch' is not in the schema" in message
    message = await failure(rt, "query", "typed:get", {"table": "videos", "id": "nope"})
    assert "'nope' is not a valid document id" in message
    await run(rt, "mutation", "typed:remove", {"table": "videos", "id": video})
    assert await run(rt, "query", "typed:get", {"table": "videos", "id": video}) is None
    assert issubclass(InvalidIdError, RippleUsageError)


async def test_over_http_and_from_the_official_pypi_client(start_server: Callable[..., ServerProcess]) -> None:
    from convex.http_client import ConvexHttpClient

    server = start_server("serve", app_dir=TYPED_APP)
    async with httpx.AsyncClient(base_url=server.url) as http:
        async def post(kind: str, path: str, args: dict[str, Any]) -> httpx.Response:
            return await http.post(f"/api/{kind}", json={"path": path, "args": args})

        r = await post("query", "typed:numbers", {"n": "5", "x": 1})
        assert r.status_code == 400 and r.json()["code"] == "ArgumentValidationError"
        assert "`n`: Input should be a valid integer (got '5')" in r.json()["message"]
        r = await post("query", "typed:numbers", {"n": 2.0, "x": 2})
        assert r.status_code == 200 and r.json()["value"] == ["2", "2.0", "None", "None"]
        user = (await post("mutation", "typed:add_user", {"name": "ann"})).json()["value"]
        video = (await post("mutation", "typed:add_video", {"owner": user, "title": "a"})).json()["value"]
        r = await post("mutation", "typed:add_video", {"owner": video, "title": "b"})
        assert r.status_code == 400 and r.json()["code"] == "ArgumentValidationError"
        assert '`owner`: Found an id of table videos, which does not match table users (Id["users"])' in r.json()["message"]
        # A live query over a by_id range is re-run when that document is written.
        async with RippleClient(server.url) as client:
            watcher = Watcher(client, "typed:by_id", {"id": video})
            await until(lambda: watcher.latest is not None and watcher.latest["title"] == "a")
            await client.mutation("typed:rename", {"id": video, "title": "b"})
            await until(lambda: watcher.latest["title"] == "b")
            await watcher.stop()
    # The PyPI client sends Python ints as floats (2 -> 2.0): an `int` argument takes them.
    client = ConvexHttpClient(server.url)
    assert await asyncio.to_thread(client.query, "typed:numbers", {"n": 2, "x": 3}) == ["2", "3.0", "None", "None"]
    with pytest.raises(Exception, match=r"400 ArgumentValidationError: .*`n`: Input should be a valid integer \(got 2.5\)"):
        await asyncio.to_thread(client.query, "typed:numbers", {"n": 2.5, "x": 3})
    assert await asyncio.to_thread(client.query, "typed:echo_video_id", {"id": video}) == video


async def test_a_schema_change_checks_the_tables_of_stored_ids(tmp_path: Any, namespace: str) -> None:
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "docs.py").write_text(
        "from server import mutation\n\n@mutation\nasync def put(ctx, table: str, doc: dict) -> str:\n"
        "    return await ctx.db.insert(table, doc)\n")
    schema = "from pydantic import BaseModel\nfrom server import Id, Schema, Table\n{models}\nschema = Schema({tables})\n"
    (tmp_path / "schema.py").write_text(schema.format(models="", tables="users=Table(), things=Table()"))
    async with open_runtime(tmp_path, namespace) as rt:
        user = await run(rt, "mutation", "docs:put", {"table": "users", "doc": {}})
        thing = await run(rt, "mutation", "docs:put", {"table": "things", "doc": {"ref": user}})
        odd = await run(rt, "mutation", "docs:put", {"table": "things", "doc": {"ref": thing}})
        (tmp_path / "schema.py").write_text(schema.format(
            models="class Thing(BaseModel):\n    ref: Id['users']\n", tables="users=Table(), things=Table(Thing)"))
        with pytest.raises(SchemaError) as err:
            await rt.load()
        assert f"document {odd}" in str(err.value) and "`ref`: Found an id of table things" in str(err.value)


class Event(BaseModel):
    type: Literal["click", "view"]
    count: int = 0


def test_a_field_named_type_is_a_field() -> None:
    """Pydantic's schemas key fields by name and schema nodes by "type": a model (or argument)
    with a field named `type` is validated like any other, strictly, and errors name it."""
    Schema(events=Table(Event))  # raised TypeError: unhashable type: 'dict'

    @query
    async def record(ctx: Any, event: Event, type: str) -> None: ...

    assert record.validate_args({"event": {"type": "view"}, "type": "x"})["event"] == Event(type="view")
    with pytest.raises(ArgumentValidationError, match=r"`event.type`"):
        record.validate_args({"event": {"type": "scroll"}, "type": "x"})
    with pytest.raises(ArgumentValidationError, match=r"`type`"):
        record.validate_args({"event": {"type": "view"}, "type": 5})
