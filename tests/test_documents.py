"""The document API against real PostgreSQL, through the in-process runtime."""

from __future__ import annotations

import asyncio
import functools
import logging
import traceback
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.core import keys
from server.core.runtime import Runtime
from server.core.values import Int64, to_convex_json
from server.errors import (
    ArgumentValidationError,
    DocumentValidationError,
    FunctionFailure,
    FunctionNotFound,
    ValueValidationError,
    WrongFunctionKind,
    is_app_file,
    redact,
    user_frames,
)

from conftest import BASIC_APP, ROOT, open_runtime
from reference import convex_cmp


async def q(rt: Runtime, path: str, **args: Any) -> Any:
    return (await rt.call("query", path, args)).value


async def m(rt: Runtime, path: str, **args: Any) -> Any:
    return (await rt.call("mutation", path, args)).value


async def test_insert_get_patch_replace_delete(runtime: Runtime) -> None:
    doc = await m(runtime, "values:store_message", author="ann", body="hi", big=Int64(2**62), blob=b"\x00\xff")
    assert doc["author"] == "ann" and doc["big"] == 2**62 and isinstance(doc["big"], Int64)
    assert doc["blob"] == b"\x00\xff"
    assert isinstance(doc["_creationTime"], float) and len(doc["_id"]) == 32
    out = await runtime.call("query", "counters:get", {"name": "none"})
    assert out.value == 0
    assert await m(runtime, "counters:inc", name="c", by=5) == 5
    assert await m(runtime, "counters:inc", name="c", by=5.0) == 10  # integral floats are ints
    assert await q(runtime, "counters:get", name="c") == 10
    await runtime.call("mutation", "counters:reset", {"name": "c"}, allow_internal=True)
    assert await q(runtime, "counters:get", name="c") == 0


async def test_pair_invariant_and_replace(runtime: Runtime) -> None:
    pid = await m(runtime, "pairs:setup")
    await m(runtime, "pairs:bump", id=pid)
    other = await m(runtime, "pairs:setup")
    await m(runtime, "pairs:bump_two_docs", first=pid, second=other)
    docs = await q(runtime, "pairs:read_two", first=pid, second=other)
    assert [(d["left"], d["right"]) for d in docs] == [(2, 2), (1, 1)]


async def test_failed_mutation_rolls_back(runtime: Runtime) -> None:
    with pytest.raises(FunctionFailure) as err:
        await runtime.call("mutation", "counters:inc_then_fail", {"name": "rb"})
    assert err.value.has_data and err.value.data == "rolled back"
    assert await q(runtime, "counters:get", name="rb") == 0


async def test_schema_validation_on_write_names_field(runtime: Runtime) -> None:
    with pytest.raises(FunctionFailure) as err:
        await m(runtime, "items:insert_many", docs=[{"a": {"$bad": 1}}])
    assert "$" in err.value.message
    rt = runtime
    fn = rt.app.registry.resolve("counters:inc")
    with pytest.raises(ArgumentValidationError, match="`by`: Input should be a valid integer"):
        fn.validate_args({"name": "x", "by": "seven"})
    with pytest.raises(ArgumentValidationError, match="`extra`: Extra inputs are not permitted"):
        fn.validate_args({"name": "x", "extra": 1})
    with pytest.raises(ArgumentValidationError, match="`name`: Field required"):
        fn.validate_args({})


async def test_document_validation_error_names_table_and_field(namespace: str, tmp_path: Any) -> None:
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    (app / "schema.py").write_text(
        "from pydantic import BaseModel\nfrom server import Schema, Table\n"
        "class Tag(BaseModel):\n    label: str\n    weight: int\n"
        "class Post(BaseModel):\n    title: str\n    tags: list[Tag] = []\n"
        "schema = Schema(posts=Table(Post))\n"
    )
    (app / "functions" / "posts.py").write_text(
        "from server import mutation\n"
        "@mutation\nasync def add(ctx, doc: dict) -> str:\n    return await ctx.db.insert('posts', doc)\n"
    )
    async with open_runtime(app, namespace) as rt:
        with pytest.raises(FunctionFailure) as err:
            await rt.call("mutation", "posts:add", {"doc": {"title": "t", "tags": [{"label": "x", "weight": "heavy"}]}})
        assert "posts" in err.value.message and "tags[0].weight" in err.value.message
        with pytest.raises(FunctionFailure) as err:
            await rt.call("mutation", "posts:add", {"doc": {"title": "t", "colour": "red"}})
        assert "colour" in err.value.message and "Extra inputs" in err.value.message


async def test_unique_first_take_filter_and_order(runtime: Runtime) -> None:
    await m(runtime, "items:insert_many", docs=[{"n": i, "a": i % 3, "b": str(i)} for i in range(20)])
    assert await q(runtime, "items:first_last") == [0, 19]
    assert await q(runtime, "items:filtered", parity=1, limit=4) == [1, 3, 5, 7]
    assert await q(runtime, "items:filtered", parity=0, limit=100) == list(range(0, 20, 2))


async def test_unique_rejects_duplicates(runtime: Runtime) -> None:
    await m(runtime, "items:insert_many", docs=[{"n": 1}, {"n": 1}])
    page = await q(runtime, "items:page", paginationOpts={"numItems": 10, "cursor": None})
    assert len(page["page"]) == 2
    await runtime.call("mutation", "counters:inc", {"name": "d"})
    # Two counters with one name: unique() in counters:get must refuse, not pick one.
    async with runtime.db.acquire() as conn:
        await conn.execute(
            'INSERT INTO counters SELECT $1, creation_time + 1, doc, k_by_creation_time || $2::bytea, k_by_name || $2::bytea FROM counters',
            "dupdupdupdupdupdupdupdupdupdupdu", b"\x01",
        )
    with pytest.raises(FunctionFailure, match="more than one document"):
        await q(runtime, "counters:get", name="d")


@pytest.mark.parametrize("how", ["posix_spawn", "fork", "forkpty", "to_thread"])
async def test_queries_cannot_start_processes(runtime: Runtime, how: str) -> None:
    with pytest.raises(FunctionFailure, match=r"a query may not start a process \((os|subprocess)\."):
        await q(runtime, "values:sneaky_process", how=how)


async def test_queries_and_mutations_cannot_use_the_network(runtime: Runtime) -> None:
    for kind, path in (("query", "counters:sneaky_network"), ("mutation", "counters:sneaky_network_mutation")):
        with pytest.raises(FunctionFailure, match=f"a {kind} may not (open a network connection|resolve a host name)"):
            await runtime.call(kind, path, {})


async def test_actions_may_use_the_network(runtime: Runtime) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"pong\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert (await runtime.call("action", "counters:fetch_port", {"port": port})).value == "pong"


async def test_queries_cannot_write(runtime: Runtime) -> None:
    with pytest.raises(FunctionFailure, match="has no attribute 'insert'"):
        await runtime.call("query", "counters:sneaky_write", {})


async def test_actions_call_queries_and_mutations(runtime: Runtime) -> None:
    assert (await runtime.call("action", "counters:twice", {"name": "t"})).value == 2
    assert (await runtime.call("action", "counters:call_internal", {"name": "t"})).value == 0
    with pytest.raises(FunctionFailure) as err:
        await runtime.call("action", "counters:action_fail", {})
    assert err.value.data == {"code": "FROM_ACTION"}


async def test_print_becomes_log_lines(runtime: Runtime) -> None:
    out = await runtime.call("query", "counters:chatty", {"n": 2})
    assert out.log_lines == ["[LOG] line 0", "[LOG] line 1", "[LOG] no newline at end"]
    out = await runtime.call("query", "counters:chatty", {"n": 300})
    assert len(out.log_lines) == 256 and out.log_lines[-1].startswith("[ERROR] Log overflow")


async def test_print_lines_stream_to_the_server_log_and_reach_clients_only_in_dev(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    for dev in (True, False):
        caplog.clear()
        async with open_runtime(BASIC_APP, namespace, dev=dev) as rt:
            with caplog.at_level(logging.INFO, logger="ripple.functions.log"):
                out = await rt.call("query", "counters:chatty", {"n": 1})
        streamed = [r.getMessage() for r in caplog.records if r.name == "ripple.functions.log"]
        assert streamed == ["[Q counters:chatty] [LOG] line 0", "[Q counters:chatty] [LOG] no newline at end"]
        assert out.log_lines == (["[LOG] line 0", "[LOG] no newline at end"] if dev else [])


async def test_index_keys_too_large_for_postgresql_are_refused_clearly(runtime: Runtime) -> None:
    with pytest.raises(FunctionFailure) as err:
        await m(runtime, "items:insert_many", docs=[{"a": "x" * 3000}])
    assert "index by_a (a)" in err.value.message and "over the 2,600-byte limit" in err.value.message
    assert "table `items`" in err.value.message
    # just under the limit: stored and found (the key adds ~50 bytes: _creationTime, _id, tags)
    (doc_id,) = await m(runtime, "items:insert_many", docs=[{"a": "y" * 2500, "n": 7}])
    assert await q(runtime, "items:by_range", index="by_a", eq=["y" * 2500]) == [doc_id]
    with pytest.raises(FunctionFailure, match="over the 2,600-byte limit"):  # a patch too
        await m(runtime, "items:patch", id=doc_id, fields={"a": "z" * 2700})


def _app_code_calling_libraries() -> None:
    from croniter import croniter

    try:
        croniter("not a cron expression")  # raises inside an installed package
    except ValueError as exc:
        to_convex_json({"bad": exc})  # raises inside Ripple


def test_dev_tracebacks_show_only_the_apps_frames_even_with_libraries_inside_the_app_dir() -> None:
    """The repository root is an app directory (the example app) holding Ripple (server/) and,
    in CI, the virtual environment (.venv/): neither is the app's code."""
    with pytest.raises(ValueValidationError) as err:
        _app_code_calling_libraries()
    everything = [f.filename for f in traceback.extract_tb(err.value.__traceback__)]
    assert any("/server/core/" in f for f in everything)  # Ripple's frames are in the traceback ...
    frames = user_frames(err.value, ROOT)  # ... but not among the app's
    assert [f.name for f in frames] == ["test_dev_tracebacks_show_only_the_apps_frames_even_with_libraries_inside_the_app_dir", "_app_code_calling_libraries"]
    chained = err.value.__context__
    assert chained is not None and any("croniter" in f.filename for f in traceback.extract_tb(chained.__traceback__))
    assert [f.name for f in user_frames(chained, ROOT)] == ["_app_code_calling_libraries"]
    message = redact(err.value, "test", dev=True, app_dir=ROOT)
    assert "_app_code_calling_libraries" in message and "server/core" not in message and "site-packages" not in message
    assert redact(err.value, "test", dev=False, app_dir=ROOT).endswith("] Server Error")


def test_code_without_a_file_is_not_the_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ripple dev` usually runs in the app directory: a pseudo-filename resolved against it
    looked like an app file, so importlib's frames were shown as the app's."""
    monkeypatch.chdir(BASIC_APP)
    assert is_app_file(str(BASIC_APP / "functions" / "counters.py"), BASIC_APP)
    for pseudo in ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", "<string>"):
        assert not is_app_file(pseudo, BASIC_APP), pseudo


async def test_internal_functions_hidden_from_clients(runtime: Runtime) -> None:
    with pytest.raises(FunctionNotFound):
        await runtime.call("mutation", "counters:reset", {"name": "x"})
    with pytest.raises(WrongFunctionKind, match="is a query, not a mutation"):
        await runtime.call("mutation", "counters:get", {"name": "x"})


async def test_paths(runtime: Runtime) -> None:
    assert (await runtime.call("query", "nested/deep/mod", {})).value == "default export"
    assert (await runtime.call("query", "nested/deep/mod:hello", {"who": "you"})).value == "hello you"
    assert (await runtime.call("query", "nested/deep/mod.js:hello", {})).value == "hello world"


async def test_errors_are_redacted_outside_dev(namespace: str) -> None:
    async with open_runtime(BASIC_APP, namespace, dev=False) as rt:
        with pytest.raises(FunctionFailure) as err:
            await rt.call("mutation", "counters:boom", {})
        assert "secret internal detail" not in err.value.message
        assert err.value.message.startswith("[Request ID: ") and err.value.message.endswith("Server Error")
    async with open_runtime(BASIC_APP, namespace, dev=True) as rt:
        with pytest.raises(FunctionFailure, match="ValueError: secret internal detail 42"):
            await rt.call("mutation", "counters:boom", {})


async def test_query_timeout(namespace: str) -> None:
    async with open_runtime(BASIC_APP, namespace, query_timeout=0.2) as rt:
        with pytest.raises(FunctionFailure, match=r"ran longer than 0\.2 s"):
            await rt.call("query", "counters:slow", {"seconds": 5})


# -- pagination ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_paginate_walks_everything_once(runtime: Runtime, order: str) -> None:
    await m(runtime, "items:insert_many", docs=[{"n": i} for i in range(23)])
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        res = await q(runtime, "items:page", paginationOpts={"numItems": 5, "cursor": cursor}, order=order)
        seen += [d["n"] for d in res["page"]]
        pages += 1
        assert isinstance(res["continueCursor"], str)
        cursor = res["continueCursor"]
        if res["isDone"]:
            break
    assert seen == (list(range(23)) if order == "asc" else list(range(22, -1, -1)))
    assert pages in (5, 6)
    # A done cursor yields an empty, done page.
    res = await q(runtime, "items:page", paginationOpts={"numItems": 5, "cursor": cursor}, order=order)
    assert res["page"] == [] and res["isDone"]


async def test_paginate_end_cursor_and_bad_cursor(runtime: Runtime) -> None:
    await m(runtime, "items:insert_many", docs=[{"n": i} for i in range(10)])
    first = await q(runtime, "items:page", paginationOpts={"numItems": 3, "cursor": None})
    assert [d["n"] for d in first["page"]] == [0, 1, 2] and not first["isDone"]
    # Insert inside the page's span: re-running with endCursor keeps the page ending where it did.
    await m(runtime, "items:insert_many", docs=[{"n": 1}])
    again = await q(runtime, "items:page", paginationOpts={"numItems": 3, "cursor": None, "endCursor": first["continueCursor"]})
    assert [d["n"] for d in again["page"]] == [0, 1, 1, 2]
    assert again["continueCursor"] == first["continueCursor"] and not again["isDone"]
    with pytest.raises(FunctionFailure) as err:
        await q(runtime, "items:page", paginationOpts={"numItems": 3, "cursor": first["continueCursor"]}, min_n=5)
    assert err.value.data == {"paginationError": "InvalidCursor"}
    with pytest.raises(FunctionFailure) as err:
        await q(runtime, "items:page", paginationOpts={"numItems": 3, "cursor": "garbage!!"})
    assert err.value.data == {"paginationError": "InvalidCursor"}


# -- index ranges: property test against a brute-force filter ---------------------------------

small_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, -0.0, 2.0, float("inf"), float("-inf")]),
    st.integers(-2, 2).map(Int64),
    st.sampled_from(["", "a", "b", "ab", "é"]),
    st.sampled_from([b"", b"\x00", b"x"]),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from(["k", "z"]), st.integers(0, 1), max_size=2),
)
documents = st.lists(
    st.fixed_dictionaries({}, optional={"a": small_values, "b": st.sampled_from(["", "x", "y", "z"])}),
    max_size=25,
)
range_specs = st.fixed_dictionaries({
    "index": st.sampled_from(["by_a", "by_a_b"]),
    "eq": st.lists(small_values, max_size=2),
    "lower": st.none() | st.tuples(st.sampled_from(["gt", "gte"]), small_values),
    "upper": st.none() | st.tuples(st.sampled_from(["lt", "lte"]), small_values),
    "order": st.sampled_from(["asc", "desc"]),
})

FIELDS = {"by_a": ["a"], "by_a_b": ["a", "b"]}


def brute_force(docs: list[dict[str, Any]], spec: dict[str, Any]) -> list[str]:
    fields = [*FIELDS[spec["index"]], "_creationTime"]
    eq = spec["eq"][: len(fields) - 1]
    range_field = fields[len(eq)]

    def value(doc: dict[str, Any], f: str) -> Any:
        return doc.get(f, keys.UNDEFINED)

    out = []
    for doc in docs:
        if any(convex_cmp(value(doc, f), v) != 0 for f, v in zip(fields, eq, strict=False)):
            continue
        v = value(doc, range_field)
        if spec["lower"]:
            c = convex_cmp(v, spec["lower"][1])
            if c < 0 or (c == 0 and spec["lower"][0] == "gt"):
                continue
        if spec["upper"]:
            c = convex_cmp(v, spec["upper"][1])
            if c > 0 or (c == 0 and spec["upper"][0] == "lt"):
                continue
        out.append(doc)

    def cmp(x: dict[str, Any], y: dict[str, Any]) -> int:
        return convex_cmp([*(value(x, f) for f in fields), x["_id"]], [*(value(y, f) for f in fields), y["_id"]])

    out.sort(key=functools.cmp_to_key(cmp), reverse=spec["order"] == "desc")
    return [d["_id"] for d in out]


def test_index_ranges_match_brute_force(namespace: str) -> None:
    loop = asyncio.new_event_loop()
    cm = open_runtime(BASIC_APP, namespace)
    rt = loop.run_until_complete(cm.__aenter__())
    try:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(documents, st.lists(range_specs, min_size=1, max_size=4))
        def check(docs: list[dict[str, Any]], specs: list[dict[str, Any]]) -> None:
            async def scenario() -> None:
                await rt.call("mutation", "items:clear", {})
                await rt.call("mutation", "items:insert_many", {"docs": docs})
                stored = (await rt.call("query", "items:page", {"paginationOpts": {"numItems": 1000, "cursor": None}})).value["page"]
                for spec in specs:
                    spec = {**spec, "eq": spec["eq"][: len(FIELDS[spec["index"]])]}
                    got = (await rt.call("query", "items:by_range", spec)).value
                    assert got == brute_force(stored, spec), spec

            loop.run_until_complete(scenario())

        check()
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()


async def test_explicit_args_model_and_return_validation(runtime: Runtime) -> None:
    assert (await runtime.call("query", "values:norm", {"x": 3, "y": 4})).value == 5.0
    with pytest.raises(ArgumentValidationError, match="`y`: Field required"):
        await runtime.call("query", "values:norm", {"x": 3})
    with pytest.raises(FunctionFailure, match="does not match its declared type"):
        await runtime.call("query", "values:bad_return", {})


async def test_returns_models_are_dumped_to_convex_values(runtime: Runtime) -> None:
    # A model (with an aliased field and a nested model) reaches the client as an object keyed by
    # alias; lists and dicts of models work the same way; dicts are validated into models first.
    assert await q(runtime, "values:labelled", label="here", x=1, y=2) == {
        "labelText": "here", "at": {"x": 1.0, "y": 2.0}
    }
    assert await q(runtime, "values:points", n=2) == [{"x": 0.0, "y": 0.0}, {"x": 1.0, "y": -1.0}]
    assert await q(runtime, "values:named_points") == {"origin": {"x": 0.0, "y": 0.0}}


async def test_top_level_field_names_starting_with_underscore_are_refused(runtime: Runtime) -> None:
    # Schemaless table, through a real mutation: refused, naming the field; nothing is written.
    with pytest.raises(FunctionFailure, match="field name '_secret' starts with '_'"):
        await m(runtime, "items:insert_many", docs=[{"n": 1}, {"n": 2, "_secret": 1}])
    assert await q(runtime, "items:filtered", parity=1, limit=10) == []
    # Only top-level names are reserved; nested objects may use them.
    await m(runtime, "items:insert_many", docs=[{"n": 3, "a": {"_inner": 1}}])
    # A table with a model refuses them too (before pydantic's extra-field check).
    counters = runtime.catalog.table("counters").table
    with pytest.raises(DocumentValidationError, match="field name '_x' starts with '_'"):
        counters.validate({"name": "c", "value": 1, "_x": 2})


async def test_normalize_id_accepts_only_ids_get_can_find(runtime: Runtime) -> None:
    doc = await m(runtime, "values:store_message", author="a", body="b")
    doc_id = doc["_id"]
    assert await q(runtime, "values:normalize", table="messages", id=doc_id) == doc_id
    assert await q(runtime, "values:normalize", table="counters", id=doc_id) is None
    assert await q(runtime, "values:normalize", table="messages", id=doc_id.upper()) is None


async def test_dev_traceback_shows_only_frames_of_the_app_directory(namespace: str, tmp_path: Any) -> None:
    # `app2` shares the prefix of `app` but is another directory: its frames are not the app's.
    app, other = tmp_path / "app", tmp_path / "app2"
    (app / "functions").mkdir(parents=True)
    other.mkdir()
    (other / "helper.py").write_text("def explode():\n    raise ValueError('from the helper')\n")
    (app / "functions" / "mod.py").write_text(
        "import importlib.util, pathlib\nfrom server import query\n"
        "spec = importlib.util.spec_from_file_location('helper2', pathlib.Path(__file__).parents[2] / 'app2' / 'helper.py')\n"
        "helper = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(helper)\n"
        "@query\nasync def boom(ctx) -> None:\n    helper.explode()\n"
    )
    async with open_runtime(app, namespace, dev=True) as rt:
        with pytest.raises(FunctionFailure) as err:
            await rt.call("query", "mod:boom", {})
    message = err.value.message
    assert "ValueError: from the helper" in message
    assert "mod.py" in message and "in boom" in message
    assert "helper.py" not in message


async def test_concurrent_duplicates_of_an_idempotent_mutation_run_once(runtime: Runtime) -> None:
    """Resends of one (session id, request id) racing each other, as after a quick reconnect:
    one runs, the others get its stored result (the primary key stops a second run even though
    the look-up happens outside the mutation's transaction)."""
    key = ("session-dup", 7)
    outs = await asyncio.gather(*(runtime.call("mutation", "counters:inc", {"name": "dup"}, idempotency_key=key)
                                  for _ in range(6)))
    assert [o.value for o in outs] == [1] * 6
    first = min(o.ts or 0 for o in outs)  # the run's own commit ts; replays answer a ts covering it
    assert first > 0 and all((o.ts or 0) >= first for o in outs)
    assert await q(runtime, "counters:get", name="dup") == 1
    again = await runtime.call("mutation", "counters:inc", {"name": "dup"}, idempotency_key=key)
    assert again.value == 1 and (again.ts or 0) >= first
    assert await q(runtime, "counters:get", name="dup") == 1


async def test_queries_of_one_statement_or_several_give_the_same_answers_and_count_once(runtime: Runtime) -> None:
    """HTTP queries first run without a transaction, allowed one statement; one that needs more
    runs again in a snapshot transaction. Either way: the same answer, one counted execution, and
    function code cannot keep the abandoned attempt's result by catching what stopped it."""
    a = await m(runtime, "pairs:setup")
    b = await m(runtime, "pairs:setup")
    await m(runtime, "pairs:bump", id=b)
    before = runtime.metrics.value("ripple_query_executions_total")
    one = await q(runtime, "pairs:read", id=b)
    two = await q(runtime, "pairs:read_two", first=a, second=b)
    swallowing = await q(runtime, "pairs:read_two_swallowing", first=a, second=b)
    assert one["left"] == 1 and [d["left"] for d in two] == [0, 1] and swallowing == two
    assert runtime.metrics.value("ripple_query_executions_total") - before == 3


async def test_a_committed_mutation_is_reported_committed_even_if_reading_its_ts_fails(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit ts is read after COMMIT, in a separate round trip. If that read fails, the
    mutation has still committed: it must succeed, with the latest ts (which covers it)."""
    from server.core import sql

    monkeypatch.setattr(sql, "LAST_COMMIT_TS", "SELECT currval('no_such_sequence')")
    out = await runtime.call("mutation", "counters:inc", {"name": "after"}, idempotency_key=("s-after", 1))
    assert out.value == 1 and out.ts == await runtime.latest_ts() and out.ts > 0
    assert await q(runtime, "counters:get", name="after") == 1
