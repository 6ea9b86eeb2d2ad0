"""The HTTP API end to end: a real `ripple serve` / `ripple dev` process on a loopback port."""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from client_sdk import RippleClient
from client_sdk.protocol import decode_ts
from server.config import Config
from server.core.metrics import Metrics
from server.errors import RippleUsageError

from conftest import APPS, BASIC_APP, ServerProcess, free_port, until, wait_healthy

pytestmark = pytest.mark.e2e

ADMIN_KEY = "test-admin-key-" + secrets.token_hex(8)


def _start(mode: str, tmp_path_factory: pytest.TempPathFactory, schema: str, pg_url: str) -> ServerProcess:
    import os
    import subprocess
    import sys

    from conftest import ROOT

    port = free_port()
    log_path = tmp_path_factory.mktemp("srv") / f"{mode}.log"
    env = {**os.environ, "DATABASE_URL": pg_url, "RIPPLE_DB_SCHEMA": schema, "RIPPLE_ADMIN_KEY": ADMIN_KEY,
           "RIPPLE_MAX_BODY_BYTES": str(64 * 1024)}
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", mode, "--port", str(port), "--dir", str(BASIC_APP)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    wait_healthy(server.url, proc, log_path)
    return server


@pytest.fixture(scope="module")
def schema_name(pg_url: str) -> Iterator[str]:
    name = "t_http_" + secrets.token_hex(4)
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(pg_url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="module")
def prod_server(tmp_path_factory: pytest.TempPathFactory, schema_name: str, pg_url: str) -> Iterator[ServerProcess]:
    server = _start("serve", tmp_path_factory, schema_name, pg_url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory, schema_name: str, pg_url: str, prod_server: ServerProcess) -> Iterator[ServerProcess]:
    server = _start("dev", tmp_path_factory, schema_name, pg_url)  # same database: two processes, one deployment
    yield server
    server.stop()


@pytest.fixture
async def client(prod_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=prod_server.url, timeout=30) as c:
        yield c


async def call(c: httpx.AsyncClient, kind: str, path: str, args: Any = None, **extra: Any) -> httpx.Response:
    return await c.post(f"/api/{kind}", json={"path": path, "args": args if args is not None else {}, **extra})


async def still_serving(c: httpx.AsyncClient) -> None:
    assert (await c.get("/_ripple/health")).status_code == 200
    r = await call(c, "query", "counters:get", {"name": "alive"})
    assert r.status_code == 200 and r.json()["status"] == "success"


# -- the concurrency promises ------------------------------------------------------------------


async def test_50_concurrent_increments_end_at_50(client: httpx.AsyncClient) -> None:
    name = "c50-" + secrets.token_hex(3)
    responses = await asyncio.gather(*(call(client, "mutation", "counters:inc", {"name": name}) for _ in range(50)))
    assert all(r.status_code == 200 and r.json()["status"] == "success" for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    assert sorted(r.json()["value"] for r in responses) == list(range(1, 51))
    r = await call(client, "query", "counters:get", {"name": name})
    assert r.json()["value"] == 50


async def test_queries_never_see_half_applied_mutations(client: httpx.AsyncClient) -> None:
    a = (await call(client, "mutation", "pairs:setup")).json()["value"]
    b = (await call(client, "mutation", "pairs:setup")).json()["value"]
    stop = asyncio.Event()

    async def writer() -> None:
        for _ in range(40):
            assert (await call(client, "mutation", "pairs:bump", {"id": a})).json()["status"] == "success"
            assert (await call(client, "mutation", "pairs:bump_two_docs", {"first": a, "second": b})).json()["status"] == "success"
        stop.set()

    observations = 0

    async def reader() -> None:
        nonlocal observations
        while not stop.is_set():
            first, second = (await call(client, "query", "pairs:read_two", {"first": a, "second": b})).json()["value"]
            assert first["left"] == first["right"], first
            assert second["left"] == second["right"], second
            # bump_two_docs moves both documents together: a is ahead of b only by its own bumps.
            assert first["left"] >= second["left"]
            observations += 1

    await asyncio.gather(writer(), writer(), reader(), reader(), reader())
    assert observations > 20
    final = (await call(client, "query", "pairs:read", {"id": a})).json()["value"]
    assert final["left"] == final["right"] == 160


# -- bad input gets a clear 4xx and the server keeps serving ------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        (b"{not json", 400, "BadJsonBody", "not valid JSON"),
        (b"", 400, "BadJsonBody", "empty"),
        (b"[1, 2]", 400, "BadJsonBody", "JSON object"),
        (b'{"path": "counters:get", "args": "x"}', 400, "BadJsonBody", "`args` must be a JSON object"),
        (b'{"path": 5, "args": {}}', 400, "BadJsonBody", "`path`"),
        (b'{"path": "counters:get", "args": {}, "format": "xml"}', 400, "BadFormat", "'xml'"),
        (b'{"path": "counters:get", "args": {"name": 7}}', 400, "ArgumentValidationError", "`name`: Input should be a valid string"),
        (b'{"path": "values:add_one", "args": {"x": "lots"}}', 400, "ArgumentValidationError", "`x`"),
        (b'{"path": "counters:inc", "args": {"name": "a"}}', 400, "WrongFunctionKind", "is a mutation, not a query"),
        (b'{"path": "counters:get", "args": {}}', 400, "ArgumentValidationError", "`name`: Field required"),
        (b'{"path": "counters:get", "args": {"name": "a", "extra": 1}}', 400, "ArgumentValidationError", "`extra`"),
        (b'{"path": "counters:nope", "args": {}}', 404, "FunctionNotFound", "counters:nope"),
        (b'{"path": "nomodule:get", "args": {}}', 404, "FunctionNotFound", "nomodule:get"),
        (b'{"path": "bad path!", "args": {}}', 400, "BadRequest", "malformed function path"),
        (b'{"path": "counters:get", "args": {"name": {"$integer": "x"}}, "format": "convex_encoded_json"}', 400, "BadConvexValue", "name"),
        (b'{"path": "counters:get", "args": {"name": "a"}, "surprise": 1}', 400, "BadJsonBody", "surprise"),
    ],
)
async def test_bad_requests_get_clear_4xx(client: httpx.AsyncClient, body: bytes, status: int, code: str, fragment: str) -> None:
    r = await client.post("/api/query", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert fragment in r.json()["message"]
    await still_serving(client)


@pytest.mark.parametrize("big", [2**60, 2**80, -(2**80), 10**30])
@pytest.mark.parametrize("fmt", ["json", "convex_encoded_json"])
async def test_integers_beyond_2_53_are_refused_whatever_their_size(client: httpx.AsyncClient, fmt: str, big: int) -> None:
    """One rule for JSON integers: within +-2**53 they are float64 values; beyond, they are
    refused (2**80 used to become a float silently, while 2**60 was refused)."""
    body = f'{{"path": "values:describe", "format": "{fmt}", "args": {{"value": {{"n": [{big}]}}}}}}'.encode()
    r = await client.post("/api/query", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "BadConvexValue"
    message = r.json()["message"]
    assert f"value.n[0]: integer {big} is outside the float64-exact range" in message
    assert '{"$integer": ...}' in message
    # a float literal that size is a float, as before
    body = f'{{"path": "values:describe", "format": "{fmt}", "args": {{"value": {float(big)!r}}}}}'.encode()
    r = await client.post("/api/query", content=body, headers={"content-type": "application/json"})
    assert r.json()["value"] == "float", r.text


async def test_error_messages_show_at_most_200_characters_of_a_path(client: httpx.AsyncClient) -> None:
    long_path = "m" * 50_000 + ":f"
    r = await call(client, "query", long_path)
    assert r.status_code == 400 and r.json()["code"] == "BadRequest"
    message = r.json()["message"]
    assert "longer than the limit of 1024 characters" in message and "(50002 characters)" in message
    assert len(message) < 400
    for path, status, code in [("x-" * 500, 400, "BadRequest"), ("m" * 1000 + ":f", 404, "FunctionNotFound")]:
        r = await call(client, "query", path)
        assert (r.status_code, r.json()["code"]) == (status, code)
        assert "(1000 characters)" in r.json()["message"] or "(1002 characters)" in r.json()["message"]
        assert len(r.json()["message"]) < 400
    r = await client.post("/api/query", json={"path": "counters:get", "args": {}, "format": "x" * 10_000})
    assert r.json()["code"] == "BadFormat" and len(r.json()["message"]) < 400
    await still_serving(client)


def test_a_million_character_path_is_not_echoed_whole() -> None:
    from server.core.registry import Registry

    with pytest.raises(RippleUsageError) as err:
        Registry().resolve("a" * 1_000_000)
    assert str(err.value) == (
        f"function path '{'a' * 200}... (1000000 characters)' is longer than the limit of 1024 characters"
    )


async def test_oversized_body_is_refused(client: httpx.AsyncClient) -> None:
    big = {"path": "values:echo", "args": {"value": "x" * 100_000}}
    r = await client.post("/api/query", json=big)
    assert r.status_code == 413 and r.json()["code"] == "BodyTooLarge" and "limit" in r.json()["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        for _ in range(100):
            yield b" " * 1024

    r = await client.post("/api/query", content=chunks())
    assert r.status_code == 413
    await still_serving(client)


async def test_wrong_function_kind_and_internal_functions(client: httpx.AsyncClient) -> None:
    r = await call(client, "mutation", "counters:get", {"name": "x"})
    assert r.status_code == 400 and "is a query, not a mutation" in r.json()["message"]
    r = await call(client, "mutation", "counters:reset", {"name": "x"})
    assert r.status_code == 404 and r.json()["code"] == "FunctionNotFound"
    r = await client.post("/api/function", json={"path": "counters:reset", "args": {"name": "x"}}, headers={"Authorization": f"Convex {ADMIN_KEY}"})
    assert r.status_code == 200 and r.json()["status"] == "success"
    r = await client.post("/api/function", json={"path": "counters:reset", "args": {"name": "x"}}, headers={"Authorization": "Convex wrong"})
    assert r.status_code == 401 and r.json()["code"] == "BadAdminKey"
    r = await client.post("/api/query", json={"path": "counters:get", "args": {"name": "x"}}, headers={"Authorization": "Bearer abc"})
    assert r.status_code == 401 and "auth" in r.json()["message"]


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nothing-here")
    assert r.status_code == 404 and r.json()["code"] == "NotFound"
    r = await client.get("/api/query")
    assert r.status_code == 405


# -- responses ----------------------------------------------------------------------------------


async def test_convex_error_carries_data(client: httpx.AsyncClient) -> None:
    r = await call(client, "mutation", "counters:fail", {"code": "E42"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "error" and body["errorData"] == {"code": "E42"} and "ConvexError" in body["errorMessage"]


async def test_internal_errors_are_redacted_in_production(client: httpx.AsyncClient, prod_server: ServerProcess) -> None:
    body = (await call(client, "mutation", "counters:boom")).json()
    assert body["status"] == "error" and "errorData" not in body
    assert "secret internal detail" not in body["errorMessage"]
    assert body["errorMessage"].startswith("[Request ID: ")
    request_id = body["errorMessage"].split("]")[0].split(": ")[1]
    assert "secret internal detail 42" in prod_server.log() and request_id in prod_server.log()
    logs = (await call(client, "query", "counters:chatty", {"n": 1})).json()["logLines"]
    assert logs == []  # production keeps function logs in the server log
    assert "[Q counters:chatty] [LOG] line 0" in prod_server.log()


async def test_dev_mode_shows_errors_and_log_lines(dev_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=dev_server.url) as c:
        body = (await call(c, "mutation", "counters:boom")).json()
        assert "ValueError: secret internal detail 42" in body["errorMessage"]
        body = (await call(c, "query", "counters:chatty", {"n": 1})).json()
        assert body["logLines"] == ["[LOG] line 0", "[LOG] no newline at end"]
    # ... and the `ripple dev` terminal shows them as they happen, as `npx convex dev` does
    assert "ripple.functions.log: [Q counters:chatty] [LOG] line 0" in dev_server.log()


async def test_two_processes_share_one_deployment(client: httpx.AsyncClient, dev_server: ServerProcess) -> None:
    name = "shared-" + secrets.token_hex(3)
    async with httpx.AsyncClient(base_url=dev_server.url) as other:
        await asyncio.gather(*(call(c, "mutation", "counters:inc", {"name": name}) for c in (client, other) for _ in range(10)))
        assert (await call(other, "query", "counters:get", {"name": name})).json()["value"] == 20


async def test_formats_and_value_encoding(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/query", json={"path": "values:add_one", "format": "convex_encoded_json", "args": [{"x": {"$integer": "KQAAAAAAAAA="}}]})
    assert r.json()["value"] == {"$integer": "KgAAAAAAAAA="}
    r = await client.post("/api/query", json={"path": "values:add_one", "format": "json", "args": {"x": 41}})
    assert r.json()["value"] == "42"  # an int64 in the `json` format: a string, as Convex exports it
    enc = {"b": {"$bytes": "AAEC"}, "f": {"$float": "AAAAAAAA+H8="}, "n": [1, 2.5, None, True, "s"]}
    r = await client.post("/api/query", json={"path": "values:echo", "format": "convex_encoded_json", "args": [{"value": enc}]})
    assert r.json()["value"] == enc
    r = await client.post("/api/query", json={"path": "values:echo", "format": "json", "args": {"value": {"b": [1, 2]}}})
    assert r.json()["value"] == {"b": [1, 2]}
    r = await client.post("/api/query", json={"path": "values:describe", "format": "convex_encoded_json", "args": [{"value": 3}]})
    assert r.json()["value"] == "int"


async def test_run_endpoint_and_nested_paths(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/run/counters/inc", json={"args": {"name": "run-ep"}, "format": "json"})
    assert r.json() == {"status": "success", "value": 1, "logLines": []}
    r = await client.post("/api/run/nested/deep/mod/hello", json={"args": {"who": "run"}})
    assert r.json()["value"] == "hello run"
    r = await client.post("/api/query", json={"path": "nested/deep/mod", "args": {}})
    assert r.json()["value"] == "default export"


async def test_query_ts_and_query_at_ts(client: httpx.AsyncClient) -> None:
    name = "ts-" + secrets.token_hex(3)
    await call(client, "mutation", "counters:inc", {"name": name})
    ts = (await client.post("/api/query_ts")).json()["ts"]
    assert isinstance(ts, str)
    at = {"path": "counters:get", "args": {"name": name}, "format": "json", "ts": ts}
    assert (await client.post("/api/query_at_ts", json=at)).json()["value"] == 1
    await call(client, "mutation", "counters:inc", {"name": "unrelated-" + name})
    assert (await client.post("/api/query_at_ts", json=at)).json()["value"] == 1  # nothing it read changed
    await call(client, "mutation", "counters:inc", {"name": name})
    r = await client.post("/api/query_at_ts", json=at)
    assert r.status_code == 400 and r.json()["code"] == "InvalidTimestamp"  # never a wrong answer
    assert "too old" in r.json()["message"]
    r = await client.post("/api/query_at_ts", json={**at, "ts": str(2**63)})
    assert r.status_code == 400 and r.json()["code"] == "InvalidTimestamp"
    r = await client.post("/api/query_at_ts", json={**at, "ts": "garbage"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidTimestamp"


async def test_cors_allows_any_origin_without_credentials(client: httpx.AsyncClient) -> None:
    r = await client.options("/api/query", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "content-type,convex-client,authorization"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers  # bearer tokens, never cookies
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "content-type,convex-client,authorization"
    assert r.headers["access-control-max-age"] == "86400"
    r = await client.options("/api/mutation", headers={"Origin": "https://other.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    assert {h.strip() for h in r.headers["access-control-allow-headers"].split(",")} >= {"authorization", "content-type", "convex-client"}
    r = await client.post("/api/query", json={"path": "counters:get", "args": {"name": "x"}},
                          headers={"Origin": "http://app.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    r = await client.post("/api/query", json={"path": "counters:get", "args": {"name": "x"}})
    assert r.status_code == 200  # not from a browser page: no CORS headers, nothing wrapped
    assert not any(h.startswith("access-control-") for h in r.headers) and "vary" not in r.headers
    r = await client.post("/api/query", json={"path": "nope:nope", "args": {}}, headers={"Origin": "http://app.example"})
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == "*"  # errors are readable too


async def test_cors_allow_list(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("serve", extra_env={"RIPPLE_CORS_ORIGINS": "https://app.example, http://localhost:5173/"})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        for origin in ("https://app.example", "http://localhost:5173"):
            r = await c.post("/api/query", json={"path": "counters:get", "args": {"name": "x"}}, headers={"Origin": origin})
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == origin
            assert r.headers["vary"] == "Origin"
            assert "access-control-allow-credentials" not in r.headers
            r = await c.options("/api/query", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "authorization"})
            assert r.status_code == 204 and r.headers["access-control-allow-origin"] == origin
            assert r.headers["access-control-allow-headers"] == "authorization"
            assert "access-control-allow-credentials" not in r.headers
        for origin in ("https://evil.example", "https://app.example.evil.example", "http://app.example"):
            r = await c.post("/api/query", json={"path": "counters:get", "args": {"name": "x"}}, headers={"Origin": origin})
            assert r.status_code == 200  # answered, but the browser does not let the page read it
            assert not [h for h in r.headers if h.startswith("access-control-")], r.headers
            assert r.headers["vary"] == "Origin"
            r = await c.options("/api/query", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            assert r.status_code == 403
            assert not [h for h in r.headers if h.startswith("access-control-")], r.headers
        r = await c.get("/_ripple/health")
        assert "access-control-allow-origin" not in r.headers and r.headers["vary"] == "Origin"


def test_cors_origins_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in [(None, ()), ("", ()), ("*", ()), (" , ", ()),
                          ("https://a.example, http://localhost:5173/", ("https://a.example", "http://localhost:5173"))]:
        if raw is None:
            monkeypatch.delenv("RIPPLE_CORS_ORIGINS", raising=False)
        else:
            monkeypatch.setenv("RIPPLE_CORS_ORIGINS", raw)
        assert Config.from_env().cors_origins == expected, raw


async def metric_samples(url: str) -> dict[str, float]:
    """Every sample of /_ripple/metrics, by its name and labels as printed."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        text = (await c.get("/_ripple/metrics")).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


async def settled(url: str, what: str, predicate: Callable[[dict[str, float]], bool], timeout: float = 15) -> dict[str, float]:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate(samples := await metric_samples(url)):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s: {samples}")
        await asyncio.sleep(0.02)
    return samples


async def test_health_and_metrics(start_server: Callable[..., ServerProcess]) -> None:
    """Each metric moves by what the server did: counters by exactly the calls, runs and
    connections made (and nothing else), gauges to the known state."""
    server = start_server("serve", app_dir=APPS / "scheduler", extra_env={"RIPPLE_ADMIN_KEY": ADMIN_KEY})
    url = server.url
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.get("/_ripple/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        text = (await http.get("/_ripple/metrics")).text
    for name, kind in [("ripple_query_executions_total", "counter"), ("ripple_mutations_total", "counter"),
                       ("ripple_actions_total", "counter"), ("ripple_function_errors_total", "counter"),
                       ("ripple_http_requests_total", "counter"), ("ripple_scheduled_jobs_total", "counter"),
                       ("ripple_websocket_connections_total", "counter"), ("ripple_subscriptions", "gauge"),
                       ("ripple_websocket_clients", "gauge"), ("ripple_shared_queries", "gauge"),
                       ("ripple_live_query_ts", "gauge"), ("ripple_scheduler_running_jobs", "gauge"),
                       ("ripple_scheduler_listener_connected", "gauge"), ("ripple_function_timeouts_total", "counter"),
                       ("ripple_event_loop_blocks_total", "counter"), ("ripple_event_loop_blocked_seconds_total", "counter")]:
        assert f"# TYPE {name} {kind}" in text, name

    start = await settled(url, "scheduler listening", lambda m: m["ripple_scheduler_listener_connected"] == 1)
    assert start["ripple_scheduler_running_jobs"] == 0
    expected: collections.Counter[str] = collections.Counter()  # what each counter must have moved by

    def check_counters(now: dict[str, float]) -> None:
        # Blocks of the event loop depend on the machine's timing, not on the calls made; so does
        # when the live-query tick reads a commit that invalidates a cached result.
        moved = {k: now.get(k, 0) - start.get(k, 0) for k in now.keys() | start.keys()
                 if k.split("{")[0].endswith("_total") and not k.startswith("ripple_event_loop_")
                 and k != "ripple_query_cache_invalidations_total"}
        assert {k: v for k, v in moved.items() if v} == dict(expected)

    async def api(route: str, path: str, args: dict[str, Any], **headers: str) -> Any:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            r = await c.post(f"/api/{route}", json={"path": path, "args": args}, headers=headers)
        expected[f'ripple_http_requests_total{{route="{route}",status="200"}}'] += 1
        assert r.status_code == 200, r.text
        return r.json()

    def jobs_counted(now: dict[str, float]) -> bool:
        """The scheduler counts a job after committing its end: wait for the expected counts."""
        return all(now.get(k, 0) - start.get(k, 0) >= n for k, n in expected.items() if k.startswith("ripple_scheduled_jobs_total"))

    def job_ended(state: str) -> None:
        expected[f'ripple_scheduled_jobs_total{{state="{state}"}}'] += 1

    # Queries, mutations, actions and their errors.
    assert (await api("query", "jobs:counter", {"key": "m"}))["value"] == 0
    expected["ripple_query_executions_total"] += 1
    expected["ripple_query_cache_misses_total"] += 1  # the first call (docs/query-cache.md)
    assert (await api("mutation", "jobs:schedule_then_fail", {"key": "m"}))["status"] == "error"
    expected['ripple_mutations_total{outcome="error"}'] += 1
    expected['ripple_function_errors_total{kind="mutation"}'] += 1
    body = await api("function", "jobs:failing_action", {"key": "m"}, authorization=f"Convex {ADMIN_KEY}")
    assert body["status"] == "error" and body["errorData"] == {"code": "ACTION_FAILED"}
    expected['ripple_actions_total{outcome="error"}'] += 1
    expected['ripple_function_errors_total{kind="action"}'] += 1
    expected['ripple_mutations_total{outcome="success"}'] += 1  # the bump the action ran first
    check_counters(await metric_samples(url))

    # Scheduled functions: a mutation that runs, one that fails, one canceled, one from an action.
    await api("mutation", "jobs:schedule", {"fn": "jobs:bump", "args": {"key": "m"}})
    expected['ripple_mutations_total{outcome="success"}'] += 2  # scheduling, then the job
    job_ended("success")
    check_counters(await settled(url, "job run", jobs_counted))
    await api("mutation", "jobs:schedule", {"fn": "jobs:bump_then_fail", "args": {"key": "m"}})
    expected['ripple_mutations_total{outcome="success"}'] += 1
    expected['ripple_mutations_total{outcome="error"}'] += 1
    expected['ripple_function_errors_total{kind="mutation"}'] += 1
    job_ended("failed")
    check_counters(await settled(url, "failing job run", jobs_counted))
    later = (await api("mutation", "jobs:schedule", {"fn": "jobs:bump", "args": {"key": "m"}, "delay": 600}))["value"]
    await api("mutation", "jobs:cancel", {"id": later})
    expected['ripple_mutations_total{outcome="success"}'] += 2
    job_ended("canceled")
    check_counters(await metric_samples(url))  # counted when the cancel commits
    await api("action", "jobs:schedule_from_action", {"key": "m"})
    expected['ripple_actions_total{outcome="success"}'] += 1
    expected['ripple_mutations_total{outcome="success"}'] += 1  # the job
    job_ended("success")
    check_counters(await settled(url, "job from an action run", jobs_counted))

    # Live queries: three websocket clients, two of them on one query.
    async with RippleClient(url) as a, RippleClient(url) as b, RippleClient(url) as c:
        subscriptions = [(a, "live"), (b, "live"), (c, "quiet")]
        seen: list[list[int]] = [[] for _ in subscriptions]

        async def follow(client: RippleClient, key: str, values: list[int]) -> None:
            async for value in client.subscribe("jobs:counter", {"key": key}):
                values.append(value)

        tasks = [asyncio.create_task(follow(client, key, values)) for (client, key), values in zip(subscriptions, seen, strict=True)]
        try:
            await until(lambda: all(values == [0] for values in seen))
            now = await metric_samples(url)
            assert (now["ripple_websocket_clients"], now["ripple_subscriptions"], now["ripple_shared_queries"]) == (3, 3, 2)
            expected["ripple_websocket_connections_total"] += 3
            expected["ripple_query_executions_total"] += 2  # one per shared query
            check_counters(now)

            # A write the "live" query reads (a scheduled job's): the live queries advance past
            # its commit, and only that shared query runs again.
            live_ts = now["ripple_live_query_ts"]
            await api("mutation", "jobs:schedule", {"fn": "jobs:bump", "args": {"key": "live"}})
            expected['ripple_mutations_total{outcome="success"}'] += 2
            job_ended("success")
            await until(lambda: seen[0][-1] == seen[1][-1] == 1)
            async with httpx.AsyncClient(base_url=url) as http:
                latest = decode_ts((await http.post("/api/query_ts")).json()["ts"])
            expected['ripple_http_requests_total{route="query_ts",status="200"}'] += 1
            assert latest > live_ts
            now = await settled(url, "live queries at the latest commit",
                                lambda m: m["ripple_live_query_ts"] >= float(latest) and jobs_counted(m))
            expected["ripple_query_executions_total"] += 1
            check_counters(now)

            await c.close()
            await settled(url, "a client gone", lambda m: (m["ripple_websocket_clients"], m["ripple_subscriptions"],
                                                         m["ripple_shared_queries"]) == (2, 2, 1))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    now = await settled(url, "all clients gone", lambda m: (m["ripple_websocket_clients"], m["ripple_subscriptions"],
                                                            m["ripple_shared_queries"]) == (0, 0, 0))
    assert seen == [[0, 1], [0, 1], [0]]
    check_counters(now)
    assert now["ripple_scheduler_running_jobs"] == 0


def test_metrics_text_prints_large_counters_in_full_and_escapes_labels() -> None:
    m = Metrics()
    m.describe("big_total", "counter", "A counter past a million")
    m.inc("big_total", 1_234_567)
    m.inc("big_total", 2.5, path='a"b\\c\nd')
    m.gauge("ratio", lambda: 0.125)
    lines = m.render().splitlines()
    assert "big_total 1234567" in lines
    assert 'big_total{path="a\\"b\\\\c\\nd"} 2.5' in lines
    assert "ratio 0.125" in lines
