"""Vector search (docs/search.md, Vector search): ctx.vector_search against a brute-force
reference, pgvector's approximate path, bad input, which documents are in an index, building and
dropping an index, and the official npm clients. Runs on whichever PostgreSQL the suite uses: the
float8[] scan without pgvector (the shared PostgreSQL 15), pgvector's paths with it (the embedded
PostgreSQL 18); tests of pgvector's HNSW path are skipped, saying why, without it."""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server import UNSET, Int64
from server.config import Config
from server.core import sql
from server.core.runtime import Runtime
from server.core.search.derived import Features
from server.core.search.text import filter_lexeme
from server.core.search.vector import VectorColumns
from server.errors import FunctionFailure

from conftest import APPS, ServerProcess, call, open_runtime, run_node_tests

SEARCH_APP = APPS / "search"
GENRES = ["jazz", "rock", "folk", "soul", "punk"]
Reference = list[tuple[float, str]]  # (cosine similarity, id), best first


def index_of(rt: Runtime, table: str = "docs", name: str = "by_embedding") -> VectorColumns:
    (index,) = [d for d in rt.catalog.table(table).derived if d.name == name]
    assert isinstance(index, VectorColumns)
    return index


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def brute_force(docs: dict[str, dict[str, Any]], vector: list[float], genres: list[str] | None, limit: int) -> Reference:
    scored = [(cosine(d["embedding"], vector), i) for i, d in docs.items() if not genres or d["genre"] in genres]
    return sorted(scored, reverse=True)[:limit]


def assert_matches(results: list[dict[str, Any]], expected: Reference, scores: dict[str, float], tolerance: float) -> None:
    """`results` are `expected`: the same scores in order, each id's own score, and (for
    float64 scores) the same ids; with pgvector's float32 storage two documents whose scores lie
    within the tolerance may trade places."""
    assert len(results) == len(expected)
    assert len({r["_id"] for r in results}) == len(results)
    for result, (score, _) in zip(results, expected, strict=True):
        assert set(result) == {"_id", "_score"}
        assert abs(result["_score"] - score) <= tolerance
        assert abs(scores[result["_id"]] - result["_score"]) <= tolerance  # KeyError: outside the filter
    if tolerance < 1e-8:
        assert [r["_id"] for r in results] == [i for _, i in expected]


def random_docs(rng: random.Random, n: int, weights: list[float] | None = None) -> list[dict[str, Any]]:
    return [{"embedding": [rng.gauss(0, 1) for _ in range(8)], "genre": rng.choices(GENRES, weights)[0]} for _ in range(n)]


async def add_docs(rt: Runtime, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(docs), 500):
        batch = docs[start:start + 500]
        ids = (await rt.call("mutation", "vectors:add_many", {"docs": batch})).value
        out.update(zip(ids, batch, strict=True))
    return out


@pytest.fixture
async def exact_rt(namespace: str) -> AsyncIterator[Runtime]:
    async with open_runtime(SEARCH_APP, namespace, vector_search="exact") as rt:
        yield rt


@pytest.fixture
async def rt(namespace: str) -> AsyncIterator[Runtime]:
    async with open_runtime(SEARCH_APP, namespace) as rt:
        yield rt


async def test_exact_search_equals_brute_force(exact_rt: Runtime) -> None:
    rng = random.Random(14)
    docs = await add_docs(exact_rt, random_docs(rng, 400))
    tolerance = 1e-6 if index_of(exact_rt).pgvector else 1e-9  # pgvector stores float32
    cases = [None, ["jazz"], ["rock", "soul"], ["folk", "punk", "jazz"]]
    for n in range(16):
        vector = [rng.gauss(0, 1) for _ in range(8)]
        genres = cases[n % len(cases)]
        limit = [10, 1, 37, 256][n % 4]
        scores = {doc_id: score for score, doc_id in brute_force(docs, vector, genres, len(docs))}
        args = {"vector": vector, "limit": limit, "genres": genres}
        results = (await exact_rt.call("action", "vectors:search", args)).value
        assert_matches(results, brute_force(docs, vector, genres, limit), scores, tolerance)
    assert exact_rt.metrics.value("ripple_vector_searches_total", path="exact") == 16
    # The default limit is 10; scores lie in [-1, 1].
    results = (await exact_rt.call("action", "vectors:search", {"vector": [1.0] * 8})).value
    assert len(results) == 10 and all(-1.0 <= r["_score"] <= 1.0 for r in results)


async def test_hnsw_recall_index_use_and_filtered_limit(rt: Runtime, pg_url: str) -> None:
    if not index_of(rt).pgvector:
        pytest.skip("this PostgreSQL has no pgvector (unset RIPPLE_TEST_DATABASE_URL: the embedded one has it)")
    rng = random.Random(4)
    # "soul" is 7% of 3,000: the planner walks the HNSW graph for it, where the first 100
    # candidates (hnsw.ef_search) hold about 7 soul documents; "punk" (3%) it scans.
    docs = await add_docs(rt, random_docs(rng, 3000, [50, 30, 10, 7, 3]))
    conn = await asyncpg.connect(pg_url, server_settings={"search_path": rt.db.namespace})
    try:
        await conn.execute("ANALYZE docs")  # what autovacuum does soon after a load
        index = index_of(rt)
        statement = sql.vector_search_pgvector("docs", "by_embedding", index.vector_schema, 8, True, "hnsw")
        async with conn.transaction():
            await conn.execute(sql.SET_LOCAL, ["hnsw.ef_search", "hnsw.iterative_scan"], ["100", "relaxed_order"])
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + statement, [1.0] * 8, 10, [filter_lexeme(0, "soul")]))
        assert "Index Scan using docs__by_embedding_hnsw" in plan, plan
    finally:
        await conn.close()
    for genres in (None, ["jazz"], ["rock", "folk"], ["soul"], ["punk"]):
        found = 0
        for _ in range(20):
            vector = [rng.gauss(0, 1) for _ in range(8)]
            expected = brute_force(docs, vector, genres, 10)
            results = (await rt.call("action", "vectors:search", {"vector": vector, "genres": genres})).value
            assert len(results) == 10  # whenever 10 documents match, 10 are found
            assert all(docs[r["_id"]]["genre"] in (genres or GENRES) for r in results)
            found += len({r["_id"] for r in results} & {i for _, i in expected})
        assert found / 200 >= 0.9, f"recall@10 {found / 200} with filter {genres}"
    # pgvector's iterative scan found 10 each time: no search needed the exact scan after it.
    assert rt.metrics.value("ripple_vector_searches_total", path="approximate") == 100


async def test_which_documents_are_in_the_index(rt: Runtime) -> None:
    """As Convex: a document whose vector field is not a list of `dimensions` float64 numbers is
    stored and left out of the index; also left out: all zeros, NaN, infinities."""
    good = [await rt.call("mutation", "vectors:add_loose", {"doc": {"v": v, "tag": "t"}}) for v in ([1.0, 0.0, 0.0], [1, 2, 3])]
    left_out = [
        {"tag": "t"}, {"v": [1.0, 2.0], "tag": "t"}, {"v": [1.0, 2.0, 3.0, 4.0], "tag": "t"},
        {"v": ["a", 1.0, 1.0], "tag": "t"}, {"v": [True, 1.0, 1.0], "tag": "t"}, {"v": [Int64(1), 1.0, 1.0], "tag": "t"},
        {"v": [0.0, 0.0, 0.0], "tag": "t"}, {"v": [math.nan, 1.0, 1.0], "tag": "t"}, {"v": [math.inf, 1.0, 1.0], "tag": "t"},
        {"v": "1,2,3", "tag": "t"}, {"v": {"x": 1.0}, "tag": "t"},
    ]
    for doc in left_out:
        await rt.call("mutation", "vectors:add_loose", {"doc": doc})  # stored: the write is not refused
    results = (await rt.call("action", "vectors:search_loose", {"vector": [1.0, 0.0, 0.0], "tag": "t"})).value
    assert [r["_id"] for r in results] == [good[0].value, good[1].value]
    assert results[0]["_score"] == pytest.approx(1.0) and results[1]["_score"] == pytest.approx(1 / math.sqrt(14))
    assert (await rt.call("action", "vectors:search_loose", {"vector": [1.0, 0.0, 0.0], "tag": "other"})).value == []
    # A missing filter field is its own value (UNSET), apart from null.
    untagged = (await rt.call("mutation", "vectors:add_loose", {"doc": {"v": [0.0, 1.0, 0.0]}})).value
    null = (await rt.call("mutation", "vectors:add_loose", {"doc": {"v": [0.0, 0.0, 1.0], "tag": None}})).value
    for value, expected in ((UNSET, untagged), (None, null)):
        found = await rt.vector_search("loose", "by_v", [1.0, 1.0, 1.0], None, lambda q, v=value: q.eq("tag", v))
        assert [r["_id"] for r in found] == [expected]
    # Writes move documents in and out of the index.
    (doc_id,) = (await add_docs(rt, [{"embedding": [1.0] * 8, "genre": "jazz"}]))
    search = {"vector": [1.0] * 8, "genres": ["jazz"]}
    assert [r["_id"] for r in (await rt.call("action", "vectors:search", search)).value] == [doc_id]
    await rt.call("mutation", "vectors:set_embedding", {"id": doc_id, "embedding": [1.0] * 7})
    assert (await rt.call("action", "vectors:search", search)).value == []
    await rt.call("mutation", "vectors:set_embedding", {"id": doc_id, "embedding": [2.0] * 8})
    assert [r["_id"] for r in (await rt.call("action", "vectors:search", search)).value] == [doc_id]
    await rt.call("mutation", "vectors:remove", {"id": doc_id})
    assert (await rt.call("action", "vectors:search", search)).value == []


def _float(value: float) -> dict[str, str]:
    """A float64 as Convex's JSON carries NaN and infinities."""
    return {"$float": base64.b64encode(struct.pack("<d", value)).decode()}


BAD_SEARCHES: list[tuple[str, dict[str, Any], str]] = [
    ("vectors:search_with", {"table": "nope", "index": "by_embedding", "vector": [1.0] * 8}, "table 'nope' is not in the schema"),
    ("vectors:search_with", {"table": "_storage", "index": "x", "vector": [1.0] * 8}, "'_storage' is not a user table"),
    ("vectors:search_with", {"table": "docs", "index": "by_genre", "vector": [1.0] * 8},
     "table 'docs' has no vector index 'by_genre' (vector indexes: by_embedding)"),
    ("vectors:search", {"vector": [1.0] * 3}, "expected a vector with 8 dimensions, received 3"),
    ("vectors:search", {"vector": []}, "expected a vector with 8 dimensions, received 0"),
    ("vectors:search", {"vector": "1,2"}, "vector must be a list of numbers, not str"),
    ("vectors:search", {"vector": [1.0, "2", 1, 1, 1, 1, 1, 1]}, "vector[1] is str, not a number"),
    ("vectors:search", {"vector": [1.0, True, 1, 1, 1, 1, 1, 1]}, "vector[1] is bool, not a number"),
    ("vectors:search", {"vector": [1.0, _float(math.nan), 1, 1, 1, 1, 1, 1]}, "vector[1] is nan; a vector holds finite numbers"),
    ("vectors:search", {"vector": [_float(-math.inf), 1, 1, 1, 1, 1, 1, 1]}, "vector[0] is -inf; a vector holds finite numbers"),
    ("vectors:search", {"vector": [0.0] * 8}, "the vector is all zeros, and cosine similarity is undefined for it"),
    ("vectors:search", {"vector": [1.0] * 8, "limit": 0}, "limit must be an integer from 1 to 256, not 0"),
    ("vectors:search", {"vector": [1.0] * 8, "limit": 257}, "limit must be an integer from 1 to 256, not 257"),
    ("vectors:search", {"vector": [1.0] * 8, "limit": 2.5}, "limit must be an integer from 1 to 256, not 2.5"),
    ("vectors:search_with", {"table": "docs", "index": "by_embedding", "vector": [1.0] * 8, "filter_field": "embedding"},
     "filter on 'embedding', which is not a filter field of the index (filter_fields: genre)"),
    ("vectors:search_with", {"table": "docs", "index": "by_embedding", "vector": [1.0] * 8, "terms": 65},
     "the filter has 65 equalities, over the limit of 64"),
    ("vectors:search_with", {"table": "docs", "index": "by_embedding", "vector": [1.0] * 8, "chained": True},
     "conditions cannot be chained (vector filters have no AND, as in Convex)"),
]


async def test_bad_searches_are_clear_errors(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("dev", app_dir=SEARCH_APP)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        ids = (await call(client, "mutation", "vectors:add_many", {"docs": [{"embedding": [1.0] * 8, "genre": "jazz"}]})).json()["value"]
        for path, args, message in BAD_SEARCHES:
            body = (await call(client, "action", path, args, format="convex_encoded_json")).json()
            assert body["status"] == "error", (args, body)
            assert message in body["errorMessage"], (args, body["errorMessage"])
        body = (await call(client, "query", "vectors:search_in_query")).json()
        assert "vector search runs in actions only" in body["errorMessage"]
        # 64 equalities are allowed; the server kept serving.
        sixty_four = {"table": "docs", "index": "by_embedding", "vector": [1.0] * 8, "terms": 64}
        assert (await call(client, "action", "vectors:search_with", sixty_four)).json() == {"status": "success", "value": [], "logLines": []}
        body = (await call(client, "action", "vectors:search", {"vector": [1.0] * 8, "genres": ["jazz"]})).json()
        assert body["status"] == "success" and [r["_id"] for r in body["value"]] == ids
        assert body["value"][0]["_score"] == pytest.approx(1.0)


SCHEMA = '''
from pydantic import BaseModel
from server import Schema, Table

class Item(BaseModel):
    v: list[float]
    tag: str

schema = Schema(items=Table(Item, vector_indexes={VECTOR_INDEXES}))
'''
FUNCTIONS = '''
from server import action, mutation

@mutation
async def add(ctx, items: list[dict]) -> list[str]:
    return [await ctx.db.insert("items", i) for i in items]

@action
async def search(ctx, vector: list[float], tag: str) -> list[dict]:
    return await ctx.vector_search("items", "by_v", vector, filter=lambda q: q.eq("tag", tag), limit=256)
'''


def write_app(app: Path, vector_indexes: str) -> None:
    (app / "functions").mkdir(parents=True, exist_ok=True)
    (app / "functions" / "items.py").write_text(FUNCTIONS)
    (app / "schema.py").write_text(SCHEMA.replace("{VECTOR_INDEXES}", vector_indexes))


async def vector_columns(conn: asyncpg.Connection, namespace: str) -> dict[str, str]:
    rows = await conn.fetch("SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema = $1 "
                            "AND table_name = 'items' AND column_name LIKE ANY ('{v_%,f_%}')", namespace)
    return {r["column_name"]: r["udt_name"] for r in rows}


async def test_declaring_builds_and_dropping_drops(tmp_path: Path, namespace: str, pg_url: str) -> None:
    app = tmp_path / "app"
    write_app(app, "{}")
    rng = random.Random(7)
    items = [{"v": [rng.gauss(0, 1) for _ in range(4)], "tag": rng.choice("ab")} for _ in range(120)]
    vector = [0.5, -1.0, 2.0, 0.25]
    conn = await asyncpg.connect(pg_url)
    try:
        await _build_and_drop(app, namespace, conn, items, vector)
    finally:
        await conn.close()


async def _build_and_drop(app: Path, namespace: str, conn: asyncpg.Connection, items: list[dict[str, Any]],
                          vector: list[float]) -> None:
    async with open_runtime(app, namespace) as rt:
        ids = (await rt.call("mutation", "items:add", {"items": items})).value
        expected = sorted(((cosine(i["v"], vector), doc_id) for doc_id, i in zip(ids, items, strict=True) if i["tag"] == "a"), reverse=True)
        write_app(app, "{'by_v': {'vectorField': 'v', 'dimensions': 4, 'filterFields': ['tag']}}")
        await rt.load()  # builds the index over the 120 stored documents
        tolerance = 1e-6 if index_of(rt, "items", "by_v").pgvector else 1e-9
        results = (await rt.call("action", "items:search", {"vector": vector, "tag": "a"})).value
        assert_matches(results, expected, {i: s for s, i in expected}, tolerance)
        columns = await vector_columns(conn, namespace)
        assert columns == {"v_by_v": "vector" if index_of(rt, "items", "by_v").pgvector else "_float8", "f_by_v": "_text"}
        # The stored definition names the column type: one made on a database with (or without)
        # pgvector is rebuilt on one without (or with) it.
        pgvector = index_of(rt, "items", "by_v").pgvector
        other = VectorColumns("items", "by_v", "v", 4, ["tag"], Features(not pgvector, "public", (0, 8, 0)))
        stored = {"by_creation_time": ["_creationTime"], "by_v": other.definition()}
        await conn.execute(f'UPDATE "{namespace}"._ripple_tables SET indexes = $1::jsonb WHERE name = $2', json.dumps(stored), "items")
        await conn.execute(f'UPDATE "{namespace}".items SET v_by_v = NULL')  # what the other column type would not hold
        await rt.load()
        results = (await rt.call("action", "items:search", {"vector": vector, "tag": "a"})).value
        assert_matches(results, expected, {i: s for s, i in expected}, tolerance)
        write_app(app, "{}")
        await rt.load()  # dropping the index drops its columns (and their PostgreSQL indexes)
        assert await vector_columns(conn, namespace) == {}
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'items'", namespace)
        assert {r["indexname"] for r in indexes} == {"items_pkey", "items__by_creation_time"}
        with pytest.raises(FunctionFailure, match="table 'items' has no vector index 'by_v' \\(vector indexes: none\\)"):
            await rt.call("action", "items:search", {"vector": vector, "tag": "a"})


@pytest.mark.node
@pytest.mark.e2e
def test_official_npm_clients_run_a_filtered_vector_search(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("dev", app_dir=SEARCH_APP, extra_env={"RIPPLE_VECTOR_SEARCH": "exact"})
    rng = random.Random(99)
    docs = random_docs(rng, 200)
    ids = httpx.post(f"{server.url}/api/mutation", json={"path": "vectors:add_many", "args": {"docs": docs}}).json()["value"]
    vector = [rng.gauss(0, 1) for _ in range(8)]
    genres = ["jazz", "folk"]
    expected = brute_force(dict(zip(ids, docs, strict=True)), vector, genres, 12)
    case = {"args": {"vector": vector, "limit": 12, "genres": genres},
            "expected": [{"_id": i, "_score": s} for s, i in expected], "tolerance": 1e-6}
    run_node_tests("vector_search.test.mjs", server, timeout=120, env={"RIPPLE_VECTOR_CASE": json.dumps(case)})


@pytest.mark.parametrize(("dimensions", "method", "relation"), [
    (2048, "hnsw-halfvec", "items__by_v_hnsw"),  # over 2,000: pgvector's HNSW indexes a halfvec cast
    (4096, "exact", None),  # over 4,000: no HNSW index at all
])
async def test_many_dimensions(tmp_path: Path, namespace: str, pg_url: str, dimensions: int, method: str,
                               relation: str | None) -> None:
    app = tmp_path / "app"
    write_app(app, f"{{'by_v': {{'vectorField': 'v', 'dimensions': {dimensions}, 'filterFields': ['tag']}}}}")
    rng = random.Random(dimensions)
    items = [{"v": [rng.gauss(0, 1) for _ in range(dimensions)], "tag": "a"} for _ in range(30)]
    vector = [rng.gauss(0, 1) for _ in range(dimensions)]
    async with open_runtime(app, namespace) as rt:
        index = index_of(rt, "items", "by_v")
        if not index.pgvector:
            pytest.skip("this PostgreSQL has no pgvector (unset RIPPLE_TEST_DATABASE_URL: the embedded one has it)")
        assert index.method == method
        ids = (await rt.call("mutation", "items:add", {"items": items})).value
        expected = sorted(((cosine(i["v"], vector), doc_id) for doc_id, i in zip(ids, items, strict=True)), reverse=True)
        results = (await rt.call("action", "items:search", {"vector": vector, "tag": "a"})).value
        assert_matches(results, expected, {i: s for s, i in expected}, 1e-6)
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND indexdef LIKE '%hnsw%'", namespace)
    finally:
        await conn.close()
    assert [r["indexname"] for r in rows] == ([relation] if relation else [])
    if relation:
        assert f"halfvec({dimensions})" in rows[0]["indexdef"]


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIPPLE_VECTOR_SEARCH", raising=False)
    monkeypatch.delenv("RIPPLE_VECTOR_EF_SEARCH", raising=False)
    assert (Config.from_env().vector_search, Config.from_env().vector_ef_search) == ("auto", 100)
    monkeypatch.setenv("RIPPLE_VECTOR_SEARCH", "Exact")
    monkeypatch.setenv("RIPPLE_VECTOR_EF_SEARCH", "400")
    assert (Config.from_env().vector_search, Config.from_env().vector_ef_search) == ("exact", 400)
    monkeypatch.setenv("RIPPLE_VECTOR_SEARCH", "hnsw")
    with pytest.raises(ValueError, match="RIPPLE_VECTOR_SEARCH must be one of auto, exact, not 'hnsw'"):
        Config.from_env()
    monkeypatch.setenv("RIPPLE_VECTOR_SEARCH", "auto")
    for bad, message in (("1001", "at most 1000"), ("0", "at least 1"), ("many", "a whole number")):
        monkeypatch.setenv("RIPPLE_VECTOR_EF_SEARCH", bad)
        with pytest.raises(ValueError, match=f"RIPPLE_VECTOR_EF_SEARCH must be {message}"):
            Config.from_env()
