"""The HTTP fast path for query cache hits (server/api/cached_responses.py), driven through the
real ASGI application in process with a live-query tick running: a hit answers byte for byte
what the full path answers; identities never share an answer; an expired token is refused; a
reload that makes a function internal is not served from requests learned before it."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from server.api.app import build_app
from server.api.cached_responses import FAST_BODY_BYTES
from server.config import AuthConfig
from server.core.runtime import Runtime
from server.core.subscriptions import SubscriptionManager

from conftest import AUTH_APP, BASIC_APP, open_runtime, unreachable_url, until
from oidc_issuer import OidcIssuer


@asynccontextmanager
async def _client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    manager = SubscriptionManager(runtime)
    await manager.start()  # the tick that keeps the query cache fresh
    try:
        await until(lambda: runtime.query_cache.applied_ts is not None)
        transport = httpx.ASGITransport(app=build_app(runtime, manager))
        async with httpx.AsyncClient(transport=transport, base_url="http://ripple.test") as client:
            yield client
    finally:
        await manager.stop()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(runtime) as c:
        yield c


def _hits(runtime: Runtime) -> float:
    return runtime.metrics.value("ripple_query_cache_hits_total")


async def _post(client: httpx.AsyncClient, body: bytes, **headers: str) -> httpx.Response:
    return await client.post("/api/query", content=body, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("fmt", ["json", "convex_encoded_json"])
async def test_a_fast_hit_answers_what_the_full_path_answers(runtime: Runtime, client: httpx.AsyncClient, fmt: str) -> None:
    """The first call takes the full path and teaches the fast path its bytes; the second is a
    fast hit; a third, the same call spelled differently, is a hit through the full path. All
    three answers are the same bytes with the same headers (CORS included), in dev mode with the
    run's log lines; each is a log stream entry and an HTTP request in the metrics."""
    body = b'{"path": "values:echo", "args": {"value": {"b": [1.5, 2, "x"], "a": null}}, "format": "%s"}' % fmt.encode()
    respelled = b'{"format":"%s","args":{"value":{"a":null,"b":[1.5,2,"x"]}},"path":"values:echo"}' % fmt.encode()
    requests_before = runtime.metrics.value("ripple_http_requests_total", route="query", status="200")
    hits = _hits(runtime)
    answers = [await _post(client, b, origin="https://app.example") for b in (body, body, respelled)]
    assert _hits(runtime) == hits + 2
    assert runtime.metrics.value("ripple_http_requests_total", route="query", status="200") == requests_before + 3
    first = answers[0]
    assert first.status_code == 200 and first.json()["status"] == "success"
    for answer in answers[1:]:
        assert answer.status_code == 200
        assert answer.content == first.content
        assert answer.headers.items() == first.headers.items()
    assert first.headers["access-control-allow-origin"] == "*"

    logged = await _post(client, b'{"path": "loglevels:levels", "args": {"tag": "fast"}}')
    again = await _post(client, b'{"path": "loglevels:levels", "args": {"tag": "fast"}}')
    assert again.content == logged.content and logged.json()["logLines"]
    entries = [e.to_json() for e in runtime.log_stream.page(0, 1000).entries if e.function == "loglevels:levels"]
    assert [e["cached"] for e in entries] == [False, True]
    assert entries[1]["lines"] == entries[0]["lines"] and entries[1]["caller"] == "http"


async def test_a_write_is_seen_by_the_next_call_and_large_bodies_take_the_full_path(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """A write into what a learned request read makes its next answer new (a miss counted once);
    so does a new entry stored for the same key by another request's bytes (the response encoded
    for the old entry is not sent again). A body larger than the fast path reads is answered,
    and hit, by the full path."""
    body = b'{"path": "counters:get", "args": {"name": "fast"}}'
    respelled = b'{"args":{"name":"fast"},"path":"counters:get"}'
    assert (await _post(client, body)).json()["value"] == 0
    assert (await _post(client, body)).json()["value"] == 0
    for expected in (1, 2):
        misses = runtime.metrics.value("ripple_query_cache_misses_total")
        await runtime.call("mutation", "counters:inc", {"name": "fast"})
        assert (await _post(client, body)).json()["value"] == expected
        assert runtime.metrics.value("ripple_query_cache_misses_total") == misses + 1
    assert (await _post(client, body)).json()["value"] == 2  # a fast hit: the response is encoded
    await runtime.call("mutation", "counters:inc", {"name": "fast"})
    assert (await _post(client, respelled)).json()["value"] == 3  # a miss: its run stores a new entry
    hits = _hits(runtime)
    assert (await _post(client, body)).json()["value"] == 3  # learned before, hit on the new entry
    assert _hits(runtime) == hits + 1
    big = b'{"path": "values:echo", "args": {"value": "%s"}}' % (b"x" * FAST_BODY_BYTES)
    hits = _hits(runtime)
    assert (await _post(client, big)).json()["value"] == "x" * FAST_BODY_BYTES
    assert (await _post(client, big)).json()["value"] == "x" * FAST_BODY_BYTES
    assert _hits(runtime) == hits + 1


async def test_fast_hits_carry_the_cors_headers_of_an_allow_list(namespace: str) -> None:
    """With RIPPLE_CORS_ORIGINS, a fast hit from an allowed origin reflects it, one from another
    origin gets only `Vary: Origin`, as the full path's answers do."""
    async with open_runtime(BASIC_APP, namespace, cors_origins=("https://app.example",)) as runtime, \
            _client(runtime) as client:
        body = b'{"path": "counters:get", "args": {"name": "cors"}}'
        for origin, allowed in (("https://app.example", "https://app.example"), ("https://evil.example", None)):
            hits = _hits(runtime)
            answers = [await _post(client, body, origin=origin) for _ in range(3)]
            assert _hits(runtime) >= hits + 2
            for answer in answers:
                assert answer.status_code == 200 and answer.json()["value"] == 0
                assert answer.headers.get("access-control-allow-origin") == allowed
                assert answer.headers["vary"] == "Origin"
                assert answer.headers.items() == answers[0].headers.items()


@pytest.fixture
async def auth_runtime(namespace: str, oidc_issuer: OidcIssuer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Runtime]:
    for name, value in oidc_issuer.app_env(unreachable_url()).items():
        monkeypatch.setenv(name, value)
    async with open_runtime(AUTH_APP, namespace, auth=AuthConfig(clock_skew_seconds=0.0)) as runtime:
        yield runtime


async def test_identities_never_share_an_answer_and_an_expired_token_is_refused(
    auth_runtime: Runtime, oidc_issuer: OidcIssuer
) -> None:
    """The same body with another token, or with none, is another identity's call: each gets its
    own answer, again and again (hits). A token that has expired since its bytes were learned
    is refused, as the full path refuses it."""
    body = b'{"path": "me:whoami", "args": {}}'
    alice, bob = oidc_issuer.token("alice"), oidc_issuer.token("bob")
    short = oidc_issuer.token("carol", ttl=3)
    async with _client(auth_runtime) as client:
        hits = _hits(auth_runtime)
        for _ in range(3):
            for token, subject in ((alice, "alice"), (bob, "bob"), (None, None), (short, "carol")):
                headers = {"authorization": f"Bearer {token}"} if token else {}
                answer = await _post(client, body, **headers)
                assert answer.status_code == 200
                value = answer.json()["value"]
                assert (value and value["subject"]) == subject
        assert _hits(auth_runtime) >= hits + 2 * 3  # alice, bob and the anonymous call: 2 hits each at least
        expired_after = oidc_issuer.claims("carol", ttl=3)["exp"] + 0.5  # the short token's exp is no later
        await until(lambda: time.time() > expired_after, timeout=10)
        refused = await _post(client, body, authorization=f"Bearer {short}")
        assert refused.status_code == 401 and refused.json()["code"] == "Unauthenticated"


async def test_a_reload_that_makes_a_function_internal_is_not_served_to_requests_learned_before(
    namespace: str, tmp_path: Path
) -> None:
    """Learned before the reload: an anonymous call of a public query. After it the query is
    internal, and an admin's call (whose cache key, without an identity, is the anonymous one's)
    has stored its result; the anonymous bytes must now be refused, not served that result."""
    app_dir = tmp_path / "app"
    (app_dir / "functions").mkdir(parents=True)
    module = app_dir / "functions" / "vis.py"
    module.write_text("from server import query\n\n\n@query\nasync def value(ctx) -> int:\n    return 1\n")
    async with open_runtime(app_dir, namespace) as runtime:
        async with _client(runtime) as client:
            body = b'{"path": "vis:value", "args": {}}'
            assert (await _post(client, body)).json()["value"] == 1
            assert (await _post(client, body)).json()["value"] == 1
            module.write_text("from server import internal_query\n\n\n@internal_query\nasync def value(ctx) -> int:\n"
                              "    return 2\n")
            shutil.rmtree(app_dir / "functions" / "__pycache__", ignore_errors=True)
            await runtime.load()
            assert (await runtime.call("query", "vis:value", {}, allow_internal=True)).value == 2
            hits = _hits(runtime)
            assert (await runtime.call("query", "vis:value", {}, allow_internal=True)).value == 2
            assert _hits(runtime) == hits + 1  # the admin's result is stored under the anonymous key
            refused = await _post(client, body)
            assert refused.status_code == 404, refused.text
