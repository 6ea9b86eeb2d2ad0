"""Full-text search (docs/search.md): tokenizing, BM25 ranking and prefix matching against a
reference computed here, filter fields, Convex's limits, pagination, index changes, the
statistics' compaction, and live search subscriptions (also through the official npm client)."""

from __future__ import annotations

import asyncio
import math
import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_live_queries import http_call, live_at_latest_commit, metric

from client_sdk import RippleClient
from server.core.runtime import Runtime
from server.core.search.text import compact_stats, query_terms, tokenize
from server.errors import FunctionFailure

from conftest import (
    APPS,
    ServerProcess,
    Watcher,
    module_server,
    open_runtime,
    run_node_tests,
    until,
)

SEARCH_APP = APPS / "search"
VOCABULARY = (
    "stream streams streaming strength string strong storm story stone stop "
    "apple apricot banana band bandana cherry chess chest river rivet road robot"
).split()


# -- a reference, written independently of server/core/search ------------------------------------

def ref_tokens(text: str) -> list[str]:
    words, current = [], ""
    for ch in text + " ":
        if ch.isalnum():
            current += ch
        elif current:
            words.append(current)
            current = ""
    return [w.lower() for w in words if len(w.encode()) < 32]


def ref_scores(docs: list[dict[str, Any]], text: str, **filters: Any) -> dict[str, float]:
    """BM25 (k1 1.2, b 0.75, idf ln(1 + (N - df + 0.5) / (df + 0.5))) of each matching document:
    the query's first 16 terms exactly, its last one also as a prefix (other terms, weight 0.5;
    64 terms in all, the query's own first), statistics over the whole table."""
    query = ref_tokens(text)[:16]
    if not query:
        return {}
    tokens = {d["_id"]: ref_tokens(d["body"]) for d in docs}
    n = len(docs)
    average = sum(map(len, tokens.values())) / n or 1.0
    vocabulary = {t for ts in tokens.values() for t in ts}
    exact = [t for t in dict.fromkeys(query) if t in vocabulary]
    expansions = sorted(t for t in vocabulary if t.startswith(query[-1]) and t not in query)
    terms = (exact + expansions)[:64]
    df = {t: sum(t in ts for ts in tokens.values()) for t in terms}
    scores = {}
    for d in docs:
        if any(d.get(f) != v for f, v in filters.items()):
            continue
        ts, score, hit = tokens[d["_id"]], 0.0, False
        for t in terms:
            tf = ts.count(t)
            if tf:
                hit = True
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                boost = 1.0 if t in exact else 0.5
                score += idf * boost * 2.2 * tf / (tf + 1.2 * (0.25 + 0.75 * len(ts) / average))
        if hit:
            scores[d["_id"]] = score
    return scores


def assert_top(got: list[dict[str, Any]], scores: dict[str, float], limit: int) -> None:
    """`got` is the best `limit` of `scores`, best first (documents with equal scores in any order)."""
    best = sorted(scores.values(), reverse=True)[:limit]
    assert len(got) == len(best), (len(got), len(best))
    got_scores = [scores[d["_id"]] for d in got]  # KeyError: a document that does not match
    for mine, theirs in zip(got_scores, best, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-12)


async def q(rt: Runtime, path: str, **args: Any) -> Any:
    return (await rt.call("query", path, args)).value


async def m(rt: Runtime, path: str, **args: Any) -> Any:
    return (await rt.call("mutation", path, args)).value


def random_docs(rng: random.Random, count: int) -> list[dict[str, Any]]:
    docs = []
    for _ in range(count):
        words = [rng.choice(VOCABULARY[: rng.randint(4, len(VOCABULARY))]) for _ in range(rng.randint(2, 12))]
        docs.append({"body": " ".join(words), "channel": rng.choice("abc"), "author": rng.choice(["ann", "bob"])})
    return docs


async def stored(rt: Runtime, ids: list[str], docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**d, "_id": i} for i, d in zip(ids, docs, strict=True)]


# -- tokenizing ----------------------------------------------------------------------------------

def test_tokenize_like_convex() -> None:
    assert tokenize("Hello, WORLD! hello-world snake_case x2 3.14") == [
        "hello", "world", "hello", "world", "snake", "case", "x2", "3", "14"
    ]
    assert tokenize("Ünïcödé ΣΊΣΥΦΟΣ 東京 café") == ["ünïcödé", "σίσυφος", "東京", "café"]
    assert tokenize("#summer @casey") == ["summer", "casey"]
    assert tokenize("a" * 31 + " " + "b" * 32 + " ok") == ["a" * 31, "ok"]  # 32 bytes or more: dropped
    assert tokenize("é" * 16) == []  # 32 UTF-8 bytes
    assert query_terms(" ".join(f"w{i}" for i in range(20))) == [f"w{i}" for i in range(16)]


# -- ranking, prefixes, filters (in-process runtime) ----------------------------------------------

async def test_ranking_and_prefixes_match_the_reference(namespace: str) -> None:
    rng = random.Random(14)
    docs = random_docs(rng, 160)
    async with open_runtime(SEARCH_APP, namespace) as rt:
        ids = await m(rt, "messages:send_many", messages=docs)
        table = await stored(rt, ids, docs)
        for text in ["stream", "STREAM!", "string strong", "str", "stre", "ban", "robot ri", "chest zzz",
                     "apple banana cherry storm", "zzz", "", "  ...  "]:
            got = await q(rt, "messages:search", text=text, limit=25)
            assert_top(got, ref_scores(table, text), 25)
            for channel in "ab":
                got = await q(rt, "messages:search", text=text, channel=channel, limit=25)
                assert_top(got, ref_scores(table, text, channel=channel), 25)
        got = await q(rt, "messages:search", text="stone", channel="c", author="bob", limit=50)
        assert_top(got, ref_scores(table, "stone", channel="c", author="bob"), 50)
        everything = await q(rt, "messages:search_all", text="s")
        assert_top(everything, ref_scores(table, "s"), 1024)


async def test_exact_term_outranks_its_prefix_expansions_and_ties_go_to_the_newest(namespace: str) -> None:
    async with open_runtime(SEARCH_APP, namespace) as rt:
        old, new = await m(rt, "messages:send_many", messages=[
            {"body": "river", "channel": "a"}, {"body": "river", "channel": "a"}])
        longer = await m(rt, "messages:send", body="rivet", channel="a")
        got = [d["_id"] for d in await q(rt, "messages:search", text="river", limit=10)]
        assert got == [new, old]  # equal scores: newest first; "rivet" does not start with "river"
        got = [d["_id"] for d in await q(rt, "messages:search", text="rive", limit=10)]
        assert got == [longer, new, old]  # one expansion each: "rivet" is rarer than "river"
        # an expansion weighs half the term itself
        exact = await m(rt, "messages:send", body="rive", channel="a")
        got = await q(rt, "messages:search", text="rive", limit=10)
        assert got[0]["_id"] == exact


async def test_prefix_expands_to_at_most_64_terms_alphabetically(namespace: str) -> None:
    async with open_runtime(SEARCH_APP, namespace) as rt:
        bodies = [f"pa{n:03d}" for n in range(80)]
        random.Random(1).shuffle(bodies)
        await m(rt, "messages:send_many", messages=[{"body": b, "channel": "a"} for b in bodies])
        found = {d["body"] for d in await q(rt, "messages:search_all", text="pa")}
        assert found == {f"pa{n:03d}" for n in range(64)}
        found = {d["body"] for d in await q(rt, "messages:search_all", text="pa079 pa")}
        assert found == {"pa079"} | {f"pa{n:03d}" for n in range(63)}


async def test_only_the_first_16_terms_count(namespace: str) -> None:
    async with open_runtime(SEARCH_APP, namespace) as rt:
        await m(rt, "messages:send", body="seventeenth", channel="a")
        first = await m(rt, "messages:send", body="first", channel="a")
        text = "first " + " ".join(f"x{i}" for i in range(15)) + " seventeenth"
        assert [d["_id"] for d in await q(rt, "messages:search", text=text)] == [first]


async def test_a_mutation_finds_its_own_writes(namespace: str) -> None:
    async with open_runtime(SEARCH_APP, namespace) as rt:
        await m(rt, "messages:send", body="owl", channel="a")
        found = await m(rt, "messages:send_and_search", body="owl owl", channel="a", text="owl")
        assert found == ["owl owl", "owl"]
        assert [d["body"] for d in await q(rt, "messages:search", text="owl")] == ["owl owl", "owl"]


async def test_filters_equal_every_value_given(namespace: str) -> None:
    async with open_runtime(SEARCH_APP, namespace) as rt:
        a = await m(rt, "messages:send", body="chess club", channel="a", author="ann")
        b = await m(rt, "messages:send", body="chess night", channel="b", author="ann")
        c = await m(rt, "messages:send", body="chess", channel="b", author="bob")
        ids = lambda docs: sorted(d["_id"] for d in docs)  # noqa: E731
        assert ids(await q(rt, "messages:search", text="chess")) == sorted([a, b, c])
        assert ids(await q(rt, "messages:search", text="chess", channel="b")) == sorted([b, c])
        assert ids(await q(rt, "messages:search", text="chess", author="ann")) == sorted([a, b])
        assert ids(await q(rt, "messages:search", text="chess", channel="b", author="bob")) == [c]
        assert await q(rt, "messages:search", text="chess", channel="z") == []
        # moving a document to another channel moves it between filtered results
        await m(rt, "messages:move", id=a, channel="b")
        assert ids(await q(rt, "messages:search", text="chess", channel="b")) == sorted([a, b, c])


async def test_results_stop_at_1024_over_all_pages(namespace: str) -> None:
    async with open_runtime(SEARCH_APP, namespace) as rt:
        for start in range(0, 1100, 275):
            await m(rt, "messages:send_many", messages=[
                {"body": f"common word{n}", "channel": "a"} for n in range(start, min(start + 275, 1100))])
        assert len(await q(rt, "messages:search_all", text="common")) == 1024
        seen: list[str] = []
        cursor = None
        while True:
            page = await q(rt, "messages:search_page", text="common", paginationOpts={"numItems": 300, "cursor": cursor})
            seen += [d["_id"] for d in page["page"]]
            if page["isDone"]:
                break
            cursor = page["continueCursor"]
        assert len(seen) == 1024 == len(set(seen))


async def test_pages_follow_the_ranking_without_gaps_or_repeats(namespace: str) -> None:
    rng = random.Random(7)
    docs = random_docs(rng, 120)
    async with open_runtime(SEARCH_APP, namespace) as rt:
        await m(rt, "messages:send_many", messages=docs)
        ranked = await q(rt, "messages:search_all", text="st")
        whole = [d["_id"] for d in ranked]
        paged: list[str] = []
        cursor = None
        for _ in range(100):
            page = await q(rt, "messages:search_page", text="st", paginationOpts={"numItems": 7, "cursor": cursor})
            paged += [d["_id"] for d in page["page"]]
            cursor = page["continueCursor"]
            if page["isDone"]:
                break
        assert paged == whole and len(whole) > 30
        other = await q(rt, "messages:search_page", text="st", paginationOpts={"numItems": 0, "cursor": None})
        with pytest.raises(FunctionFailure, match="InvalidCursor"):
            await q(rt, "messages:search_page", text="stone", paginationOpts={"numItems": 5, "cursor": cursor})
        assert other["page"] == [] and not other["isDone"]
        # a post-filter applies to each result, as on other queries
        long = await q(rt, "messages:search_long", text="st")
        assert long == [d for d in ranked if len(d["body"]) > 20][:5]


@pytest.mark.parametrize("code, message", [
    ("q.search('channel', 'x')", "searches field 'body', not 'channel'"),
    ("q.search('body', 'x').search('body', 'y')", "search() may be called once"),
    ("q.search('body', 3)", "must be a string"),
    ("q.search('body', 'x').eq('body', 'y')", "has no filter field 'body'"),
    ("q.eq('channel', 'a')", "needs q.search('body', text)"),
    ("q.search('body', 'x').eq('channel', {1, 2})", "channel"),
])
async def test_bad_searches_are_named(namespace: str, tmp_path: Path, code: str, message: str) -> None:
    app = tmp_path / "app"
    shutil.copytree(SEARCH_APP, app)
    (app / "functions" / "bad.py").write_text(
        "from server import query\n\n\n@query\nasync def run(ctx) -> list:\n"
        f"    return await ctx.db.query('messages').with_search_index('search_body', lambda q: {code}).take(1)\n\n\n"
        "@query\nasync def unknown(ctx) -> list:\n"
        "    return await ctx.db.query('messages').with_search_index('nope', lambda q: q.search('body', 'x')).take(1)\n\n\n"
        "@query\nasync def ordered(ctx) -> list:\n"
        "    return await ctx.db.query('messages').with_search_index('search_body', lambda q: q.search('body', 'x'))"
        ".order('desc').take(1)\n\n\n"
        "@query\nasync def late(ctx) -> list:\n"
        "    return await ctx.db.query('messages').order('desc').with_search_index('search_body', lambda q: q.search('body', 'x')).take(1)\n"
    )
    async with open_runtime(app, namespace) as rt:
        with pytest.raises(FunctionFailure, match=re.escape(message)):
            await q(rt, "bad:run")
        with pytest.raises(FunctionFailure, match=r"no search index 'nope'.*search_body"):
            await q(rt, "bad:unknown")
        with pytest.raises(FunctionFailure, match="relevance order"):
            await q(rt, "bad:ordered")
        with pytest.raises(FunctionFailure, match="must come right after"):
            await q(rt, "bad:late")
        assert await q(rt, "messages:search", text="anything") == []  # still serving


# -- index changes and statistics ------------------------------------------------------------------

def _app_with(tmp_path: Path, schema_edit: Callable[[str], str]) -> Path:
    app = tmp_path / f"app{len(list(tmp_path.iterdir()))}"
    shutil.copytree(SEARCH_APP, app)
    schema = app / "schema.py"
    schema.write_text(schema_edit(schema.read_text()))
    return app


async def _kept(pg_url: str, namespace: str) -> set[str]:
    """What of a search index is in the database: its postings table, statistics rows."""
    conn = await asyncpg.connect(pg_url)
    try:
        tables = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", namespace)
        stats = await conn.fetchval(f'SELECT count(*) FROM "{namespace}"._ripple_search_stats')
        return {r["table_name"] for r in tables if r["table_name"].startswith("_search_")} | ({"<stats>"} if stats else set())
    finally:
        await conn.close()


async def test_declaring_a_search_index_builds_it_and_dropping_it_cleans_up(namespace: str, pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(3)
    docs = random_docs(rng, 80)
    without = _app_with(tmp_path, lambda s: s.replace(
        'search_indexes={"search_body": SearchIndex(search_field="body", filter_fields=["channel", "author"])},', ""))
    async with open_runtime(without, namespace) as rt:
        ids = await m(rt, "messages:send_many", messages=docs)
    assert await _kept(pg_url, namespace) == set()
    async with open_runtime(SEARCH_APP, namespace) as rt:  # declared: backfilled
        table = await stored(rt, ids, docs)
        assert_top(await q(rt, "messages:search", text="stro", limit=40), ref_scores(table, "stro"), 40)
        kept = await _kept(pg_url, namespace)
        assert len(kept) == 2 and "<stats>" in kept
    # the definition changes (a filter field less): rebuilt, still right
    fewer = _app_with(tmp_path, lambda s: s.replace('filter_fields=["channel", "author"]', 'filter_fields=["channel"]'))
    async with open_runtime(fewer, namespace) as rt:
        assert_top(await q(rt, "messages:search", text="band", channel="b", limit=40),
                   ref_scores(table, "band", channel="b"), 40)
    async with open_runtime(without, namespace) as rt:
        pass
    assert await _kept(pg_url, namespace) == set()


async def test_statistics_survive_compaction_and_follow_every_write(namespace: str, pg_url: str) -> None:
    rng = random.Random(11)
    docs = random_docs(rng, 60)
    async with open_runtime(SEARCH_APP, namespace) as rt:
        ids = await m(rt, "messages:send_many", messages=docs)
        table = await stored(rt, ids, docs)
        for i in range(0, 60, 3):  # edits, moves and deletes, each logged as deltas
            await m(rt, "messages:edit", id=ids[i], body="storm " + table[i]["body"])
            table[i]["body"] = "storm " + table[i]["body"]
        for i in range(1, 60, 5):
            await m(rt, "messages:remove", id=ids[i])
        table = [d for n, d in enumerate(table) if n % 5 != 1]
        before = {t: await q(rt, "messages:search", text=t, limit=30) for t in ("storm", "sto", "apple b")}
        for t, got in before.items():
            assert_top(got, ref_scores(table, t), 30)
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": namespace})
        try:
            rows_before = await conn.fetchval("SELECT count(*) FROM _ripple_search_stats")
            assert await compact_stats(conn, lock=1234) > 0
            rows_after = await conn.fetchval("SELECT count(*) FROM _ripple_search_stats")
            assert rows_after < rows_before / 3
            # one row per term a document still holds, plus the totals
            vocabulary = {t for d in table for t in ref_tokens(d["body"])}
            assert rows_after == len(vocabulary) + 1
        finally:
            await conn.close()
        for t, got in before.items():
            assert await q(rt, "messages:search", text=t, limit=30) == got


async def test_concurrent_writers_do_not_conflict_over_the_statistics(namespace: str) -> None:
    """Every write logs statistics deltas for the same terms; they are inserts, never updates of a
    shared row, so concurrent mutations writing the same words are not retried for them."""
    async with open_runtime(SEARCH_APP, namespace) as rt:
        before = rt.metrics.value("ripple_mutation_retries_total")
        await asyncio.gather(*(m(rt, "messages:send", body="same words every time", channel="a") for _ in range(40)))
        assert rt.metrics.value("ripple_mutation_retries_total") == before
        assert len(await q(rt, "messages:search_all", text="same")) == 40


# -- live searches (a real server and clients) -----------------------------------------------------

@pytest.fixture(scope="module")
def search_server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(pg_url, tmp_path_factory, "serve", SEARCH_APP)


@pytest.mark.e2e
async def test_live_search_follows_matching_writes_only(search_server: ServerProcess) -> None:
    url = search_server.url
    async with RippleClient(url) as client:
        hit = await client.mutation("messages:send", {"body": "live kettle", "channel": "live"})
        watcher = Watcher(client, "messages:search", {"text": "kettle", "channel": "live"})
        await until(lambda: watcher.values and [d["_id"] for d in watcher.latest] == [hit])

        async def executions_caused_by(path: str, args: dict[str, Any]) -> float:
            await live_at_latest_commit(url)
            before = metric(url, "ripple_query_executions_total")
            await client.mutation(path, args)
            await live_at_latest_commit(url)
            return metric(url, "ripple_query_executions_total") - before

        # not re-run: another table, a message without the term, the term in another channel
        assert await executions_caused_by("messages:note", {"text": "kettle"}) == 0
        assert await executions_caused_by("messages:send", {"body": "teapot", "channel": "live"}) == 0
        assert await executions_caused_by("messages:send", {"body": "kettle", "channel": "elsewhere"}) == 0
        # re-run: a matching insert, patches in and out, a delete
        second = await client.mutation("messages:send", {"body": "kettle kettle", "channel": "live"})
        await until(lambda: {d["_id"] for d in watcher.latest} == {hit, second})
        teapot = await client.mutation("messages:send", {"body": "teapot", "channel": "live"})
        await client.mutation("messages:edit", {"id": teapot, "body": "teapot and kettle"})
        await until(lambda: {d["_id"] for d in watcher.latest} == {hit, second, teapot})
        await client.mutation("messages:edit", {"id": hit, "body": "live pan"})
        await until(lambda: {d["_id"] for d in watcher.latest} == {second, teapot})
        await client.mutation("messages:remove", {"id": second})
        await until(lambda: [d["_id"] for d in watcher.latest] == [teapot])
        assert all(len(v) <= 3 for v in watcher.values)
        await watcher.stop()


@pytest.mark.e2e
async def test_live_prefix_search_sees_new_expansions(search_server: ServerProcess) -> None:
    async with RippleClient(search_server.url) as client:
        watcher = Watcher(client, "messages:search", {"text": "quokk"})
        await until(lambda: watcher.values == [[]])
        new = await client.mutation("messages:send", {"body": "a Quokka smiles", "channel": "zoo"})
        await until(lambda: [d["_id"] for d in watcher.latest] == [new])
        await watcher.stop()
    assert await http_call(search_server.url, "query", "messages:search", {"text": "QUOKKA"}) != []


@pytest.mark.e2e
async def test_a_live_last_page_takes_in_matches_that_rank_after_it(search_server: ServerProcess) -> None:
    """A page that ends the results (isDone) reaches to their end, as an index range's last page
    does: a live page that was empty, or whose last result ranks first, shows a new match that
    ranks after everything it holds."""
    channel = f"pages-{random.randrange(10**9)}"
    args = {"text": "heron", "channel": channel, "paginationOpts": {"numItems": 5, "cursor": None}}
    async with RippleClient(search_server.url) as client:
        watcher = Watcher(client, "messages:search_page", args)
        try:
            await until(lambda: watcher.values and watcher.latest["page"] == [] and watcher.latest["isDone"])
            first = await client.mutation("messages:send", {"body": "heron heron heron", "channel": channel})
            await until(lambda: [d["_id"] for d in watcher.latest["page"]] == [first])
            # once in a longer text: ranks after `first`
            second = await client.mutation("messages:send", {"body": "a grey heron stands in the shallows", "channel": channel})
            await until(lambda: [d["_id"] for d in watcher.latest["page"]] == [first, second])
            assert watcher.latest["isDone"]
        finally:
            await watcher.stop()


@pytest.mark.e2e
def test_search_through_the_npm_client(search_server: ServerProcess) -> None:
    run_node_tests("search.test.mjs", search_server)
