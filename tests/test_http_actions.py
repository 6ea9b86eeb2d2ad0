"""HTTP actions (docs/http-actions.md) through real `ripple serve` and `ripple dev` processes on
loopback ports and httpx: routing, methods, streamed and limited bodies, CORS, webhook
signatures, errors, runaway handlers, start-up errors and reloads. The router's matching and
the signature checks are also tested in process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from server.config import Config
from server.core.http_router import Cors, HttpRouteError, HttpRouter
from server.core.loader import load_app
from server.core.webhooks import (
    WebhookVerificationError,
    verify_hmac_signature,
    verify_standard_webhook,
)
from server.errors import AppLoadError

from conftest import APPS, ServerProcess, free_port, module_server

APP = APPS / "http_actions"
MB = 1024 * 1024
CLERK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # as in the app's functions/http.py
GITHUB_SECRET = b"It's a Secret to Everybody"
ORIGIN = "https://app.example.com"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`ripple serve` (production mode: errors redacted) of the test app, default limits."""
    yield from module_server(pg_url, tmp_path_factory, "serve", APP, unset=("RIPPLE_HTTP_ACTION_MAX_BODY_BYTES",))


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        yield c


# -- routes and methods -----------------------------------------------------------------------------

async def test_exact_and_prefix_routes_the_longest_prefix_winning(client: httpx.AsyncClient) -> None:
    async def route(method: str, path: str) -> str:
        r = await client.request(method, path)
        assert r.status_code == 200, r.text
        assert r.json()["path"] == path and r.json()["method"] == method
        return str(r.json()["route"])

    assert await route("GET", "/hello") == "/hello"
    assert await route("POST", "/hello") == "/hello"
    assert await route("GET", "/files/a.txt") == "/files/"
    assert await route("GET", "/files/") == "/files/"
    assert await route("GET", "/files/deep/a/b") == "/files/deep/"  # the longer prefix
    assert await route("GET", "/files/exact") == "/files/exact"  # exact beats any prefix
    assert await route("GET", "/files/exact/more") == "/files/"
    assert await route("PUT", "/convex-style") == "/convex-style"  # http.route(path=, method=, handler=)
    head = await client.head("/hello")  # HEAD runs the GET route, without a body
    assert head.status_code == 200 and head.content == b""
    for path in ("/nothing", "/files", "/hello/", "/api", "/"):
        r = await client.get(path)
        assert r.status_code == 404 and r.json() == {"code": "NotFound", "message": f"no route for GET {path}"}


async def test_a_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    r = await client.delete("/hello")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
    assert r.json()["code"] == "MethodNotAllowed" and "DELETE is not allowed on /hello" in r.json()["message"]
    r = await client.post("/files/x")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = await client.patch("/cors")  # a CORS route's preflight is routed too
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, OPTIONS, POST"


def test_the_router_matches_as_convex_does() -> None:
    http = HttpRouter()

    async def handler(ctx: object, request: object) -> None:
        return None

    http.route("/a", methods=["GET"])(handler)
    http.route(path_prefix="/", methods=["POST", "GET"])(handler)
    http.route(path_prefix="/a/", methods=["GET"])(handler)
    assert http.lookup("/a", "GET").label == "GET /a"  # type: ignore[union-attr]
    assert http.lookup("/a", "POST").label == "POST /*"  # type: ignore[union-attr]  # exact is per method
    assert http.lookup("/a/b", "GET").label == "GET /a/*"  # type: ignore[union-attr]
    assert http.lookup("/a/b", "HEAD").label == "GET /a/*"  # type: ignore[union-attr]
    assert http.lookup("/a/b", "PUT") is None and http.allowed("/a/b") == ["GET", "HEAD", "POST"]
    assert [r.label for r in http.routes()] == ["GET /a", "GET /*", "GET /a/*", "POST /*"]


@pytest.mark.parametrize(("declare", "message"), [
    ({"path": "/api/hooks", "methods": ["POST"]}, "route path '/api/hooks' is under /api/, which Ripple reserves"),
    ({"path_prefix": "/_ripple/", "methods": ["GET"]}, "route path_prefix '/_ripple/' is under /_ripple/"),
    ({"path_prefix": "/files", "methods": ["GET"]}, "route path_prefix '/files' must end with a /"),
    ({"path": "hooks", "methods": ["GET"]}, "route path 'hooks' does not start with a /"),
    ({"path": "/a b", "methods": ["GET"]}, "is not a URL path"),
    ({"path": "/a", "methods": ["TRACE"]}, "'TRACE' is not a method HTTP actions route"),
    ({"path": "/a", "path_prefix": "/b/", "methods": ["GET"]}, "a path or a path_prefix, and not both"),
    ({"path": "/a", "methods": "GET"}, "methods must be a list"),
])
def test_bad_routes_are_refused_naming_the_route(declare: dict[str, object], message: str) -> None:
    with pytest.raises(HttpRouteError, match=re.escape(message)):
        HttpRouter().route(**declare)  # type: ignore[arg-type]


def test_a_duplicate_route_is_refused() -> None:
    http = HttpRouter()

    async def handler(ctx: object, request: object) -> None:
        return None

    http.route("/dup", methods=["GET", "POST"])(handler)
    with pytest.raises(HttpRouteError, match=re.escape("route POST /dup is declared twice")):
        http.route(path="/dup", method="POST", handler=handler)
    http.route(path_prefix="/p/", methods=["GET"])(handler)
    with pytest.raises(HttpRouteError, match=re.escape("route GET /p/* is declared twice")):
        http.route(path_prefix="/p/", methods=["GET"])(handler)


def test_cors_settings_are_checked() -> None:
    with pytest.raises(HttpRouteError, match="list of origins"):
        Cors(origins="https://a.example")
    with pytest.raises(HttpRouteError, match="without a trailing /"):
        Cors(origins=["https://a.example/"])
    with pytest.raises(HttpRouteError, match="needs the origins listed"):
        Cors(origins=["*"], credentials=True)


HTTP_PY = """from server import HttpRouter
from server.http import PlainTextResponse

http = HttpRouter()


async def handler(ctx, request):
    return PlainTextResponse("ok")

"""


def app_with_routes(tmp_path: Path, routes: str) -> Path:
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "functions" / "http.py").write_text(HTTP_PY + routes)
    return app


@pytest.mark.parametrize(("routes", "error"), [
    ('http.route(path="/api/hooks", method="POST", handler=handler)\n',
     "functions/http.py:10: HttpRouteError: route path '/api/hooks' is under /api/, which Ripple reserves for its own endpoints"),
    ('http.route(path="/dup", method="GET", handler=handler)\nhttp.route(path="/dup", method="GET", handler=handler)\n',
     "functions/http.py:11: HttpRouteError: route GET /dup is declared twice"),
])
def test_route_errors_fail_the_load_naming_file_line_and_route(tmp_path: Path, routes: str, error: str) -> None:
    with pytest.raises(AppLoadError) as failure:
        load_app(app_with_routes(tmp_path, routes))
    assert str(failure.value) == error
    assert load_app(app_with_routes(tmp_path / "partial", routes), partial=True).load_errors == {"functions/http.py": error}


def test_serve_refuses_to_start_with_a_reserved_route(tmp_path: Path, pg_url: str, namespace: str) -> None:
    app = app_with_routes(tmp_path, '@http.route("/_ripple/mine", methods=["GET"])\nasync def mine(ctx, request):\n    return None\n')
    env = {**os.environ, "DATABASE_URL": pg_url, "RIPPLE_DB_SCHEMA": namespace}
    out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--port", str(free_port()), "--dir", str(app)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "functions/http.py:10: HttpRouteError: route path '/_ripple/mine' is under /_ripple/" in out.stdout + out.stderr


def test_http_py_must_define_the_router(tmp_path: Path) -> None:
    app = app_with_routes(tmp_path, "")
    (app / "functions" / "http.py").write_text("router = 1\n")
    with pytest.raises(AppLoadError, match=re.escape("functions/http.py must define `http = HttpRouter()`")):
        load_app(app)


def test_the_body_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config.from_env().http_action_max_body_bytes == 20 * MB
    monkeypatch.setenv("RIPPLE_HTTP_ACTION_MAX_BODY_BYTES", "1234")
    assert Config.from_env().http_action_max_body_bytes == 1234
    monkeypatch.setenv("RIPPLE_HTTP_ACTION_MAX_BODY_BYTES", "lots")
    with pytest.raises(ValueError, match="RIPPLE_HTTP_ACTION_MAX_BODY_BYTES must be a whole number"):
        Config.from_env()


# -- bodies -----------------------------------------------------------------------------------------

def _rss(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


async def test_a_50_mb_body_streams_through_a_handler_in_bounded_memory(
    start_server: Callable[..., ServerProcess],
) -> None:
    big = start_server("serve", app_dir=APP, args=["--http-action-max-body-bytes", str(64 * MB)])
    pattern = hashlib.sha256(b"seed").digest() * (MB // 32)
    expected = hashlib.sha256()
    size = 50 * MB
    async with httpx.AsyncClient(base_url=big.url, timeout=120) as c:
        assert (await c.post("/hash", content=b"warm up")).status_code == 200
        before = _rss(big.proc.pid, "VmRSS")

        async def body() -> AsyncIterator[bytes]:
            for i in range(size // MB):
                chunk = i.to_bytes(4, "big") + pattern[4:]
                expected.update(chunk)
                yield chunk

        r = await c.post("/hash", content=body())
        growth = _rss(big.proc.pid, "VmHWM") - before
    assert r.status_code == 200, r.text
    assert r.json() == {"sha256": expected.hexdigest(), "bytes": size}
    print(f"a 50 MB body grew the server's RSS by {growth / MB:.1f} MB")
    assert growth < 10 * MB, f"the server's RSS grew by {growth / MB:.0f} MB for a 50 MB body"


async def test_a_declared_length_over_the_limit_is_413_before_the_handler_runs(server: ServerProcess) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:  # the headers only: the 413 comes without a byte of the body being sent
        writer.write(f"POST /hash HTTP/1.1\r\nHost: {host}\r\nContent-Length: {20 * MB + 1}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")


async def test_a_client_leaving_mid_body_is_no_error(server: ServerProcess) -> None:
    key = 'ripple_http_action_requests_total{route="POST /hash",status="cut"}'
    before = server.metrics().get(key, 0)
    host, port = server.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /hash HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\nonly ten b".encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    deadline = time.monotonic() + 10
    while server.metrics().get(key, 0) == before:
        assert time.monotonic() < deadline, "the request was not counted as cut"
        await asyncio.sleep(0.1)
    assert "HTTP action POST /hash failed" not in server.log()


async def _chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // MB):
        yield b"z" * MB


async def test_a_chunked_body_past_the_limit_is_413(client: httpx.AsyncClient) -> None:
    ok = await client.post("/hash", content=_chunks(20 * MB))  # exactly the limit: fine
    assert ok.status_code == 200 and ok.json()["bytes"] == 20 * MB
    for path in ("/hash", "/swallow"):  # /swallow catches its read's error: still 413
        r = await client.post(path, content=_chunks(21 * MB))
        assert r.status_code == 413, r.text
        assert r.json() == {"code": "BodyTooLarge",
                            "message": f"the request body exceeds the {20 * MB}-byte limit of HTTP actions"}


async def test_a_body_past_the_limit_cuts_a_response_already_started(
    start_server: Callable[..., ServerProcess],
) -> None:
    app_dir = APP
    small = start_server("serve", app_dir=app_dir, extra_env={"RIPPLE_HTTP_ACTION_MAX_BODY_BYTES": str(MB)})
    async with httpx.AsyncClient(base_url=small.url, timeout=30) as c:
        r = await c.post("/progress", content=_chunks(MB))  # within the limit: the whole answer
        assert r.status_code == 200 and r.text == "read 1 MiB\n"
        with pytest.raises(httpx.TransportError):
            async with c.stream("POST", "/progress", content=_chunks(4 * MB)) as r:
                assert r.status_code == 200  # started before the body passed the limit
                await r.aread()
        assert (await c.get("/hello")).status_code == 200
    assert "its response was cut" in small.log() and "RequestBodyTooLarge" in small.log()


# -- CORS -------------------------------------------------------------------------------------------

async def test_cors_preflight_and_responses_of_a_route(client: httpx.AsyncClient) -> None:
    asked = {"access-control-request-method": "POST", "access-control-request-headers": "x-custom"}
    r = await client.options("/cors", headers={"origin": ORIGIN, **asked})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN and r.headers["vary"] == "Origin"
    assert r.headers["access-control-allow-methods"] == "GET, HEAD, POST"
    assert r.headers["access-control-allow-headers"] == "Content-Type, X-Custom"
    refused = await client.options("/cors", headers={"origin": "https://evil.example", **asked})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert refused.headers["vary"] == "Origin"

    r = await client.post("/cors", headers={"origin": ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-expose-headers"] == "X-Note" and r.headers["x-note"] == "read me"
    r = await client.get("/cors", headers={"origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers and r.headers["vary"] == "Origin"

    # The app-wide CORS (any origin, by default, on /api/) leaves HTTP actions alone.
    r = await client.get("/hello", headers={"origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = await client.options("/hello", headers={"origin": ORIGIN, **asked})
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    api = await client.post("/api/query", json={"path": "notes:texts", "args": {}}, headers={"origin": ORIGIN})
    assert api.headers["access-control-allow-origin"] == "*"


# -- webhooks ---------------------------------------------------------------------------------------

def svix_headers(body: bytes, secret: str = CLERK_SECRET, *, msg_id: str | None = None, at: float | None = None,
                 prefix: str = "svix", extra_signatures: tuple[str, ...] = ()) -> dict[str, str]:
    """Sign as the Standard Webhooks spec says: HMAC-SHA256 over `id.timestamp.body` with the
    base64-decoded secret, sent as `v1,<base64>`."""
    msg_id = msg_id or "msg_" + secrets.token_hex(8)
    stamp = str(int(time.time() if at is None else at))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()).decode()
    return {f"{prefix}-id": msg_id, f"{prefix}-timestamp": stamp,
            f"{prefix}-signature": " ".join([*extra_signatures, f"v1,{signature}"])}


CLERK_EVENT = json.dumps({"type": "user.created", "data": {"id": "user_29w83sxmDNGwOuEthce5gg56FcC"}}).encode()


async def test_a_svix_signed_webhook_is_accepted_once(client: httpx.AsyncClient) -> None:
    headers = svix_headers(CLERK_EVENT)
    r = await client.post("/webhooks/clerk", content=CLERK_EVENT, headers=headers)
    assert r.status_code == 200 and r.json() == {"recorded": True}, r.text
    again = await client.post("/webhooks/clerk", content=CLERK_EVENT, headers=headers)  # a replay in the tolerance
    assert again.status_code == 200 and again.json() == {"recorded": False}  # the app's mutation refused it
    other = svix_headers(CLERK_EVENT, prefix="webhook", extra_signatures=("v1,bm90IHRoaXMgb25l", "v1a,ignored"))
    r = await client.post("/webhooks/clerk", content=CLERK_EVENT, headers=other)  # webhook-*, several signatures
    assert r.status_code == 200 and r.json() == {"recorded": True}, r.text


@pytest.mark.parametrize(("case", "message"), [
    ("tampered body", "no webhook signature matches"),
    ("wrong secret", "no webhook signature matches"),
    ("old timestamp", " s old, beyond the 300 s tolerance"),
    ("future timestamp", " s in the future, beyond the 300 s tolerance"),
    ("missing headers", "the webhook-id, webhook-timestamp and webhook-signature headers (or svix-*) are missing"),
    ("malformed signature", "no webhook signature matches"),
])
async def test_a_bad_webhook_is_refused_with_401(client: httpx.AsyncClient, case: str, message: str) -> None:
    body, headers = CLERK_EVENT, svix_headers(CLERK_EVENT)
    if case == "tampered body":
        body = CLERK_EVENT.replace(b"user.created", b"user.deleted")
    elif case == "wrong secret":
        headers = svix_headers(CLERK_EVENT, "whsec_" + base64.b64encode(b"another secret").decode())
    elif case == "old timestamp":
        headers = svix_headers(CLERK_EVENT, at=time.time() - 600)
    elif case == "future timestamp":
        headers = svix_headers(CLERK_EVENT, at=time.time() + 600)
    elif case == "missing headers":
        headers = {}
    else:
        headers["svix-signature"] = "v1 v1,%%% nonsense"
    r = await client.post("/webhooks/clerk", content=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "WebhookVerificationFailed" and message in r.json()["message"]


def test_the_tolerance_of_standard_webhooks_is_a_parameter() -> None:
    old = time.time() - 600
    headers = svix_headers(b"{}", at=old)
    assert verify_standard_webhook(b"{}", headers, CLERK_SECRET, tolerance=900) == headers["svix-id"]
    with pytest.raises(WebhookVerificationError, match="beyond the 60 s tolerance"):
        verify_standard_webhook(b"{}", svix_headers(b"{}", at=time.time() - 61), CLERK_SECRET, tolerance=60)
    with pytest.raises(ValueError, match="the webhook secret is empty"):
        verify_standard_webhook(b"{}", headers, "", tolerance=900)


async def test_plain_hmac_signatures_hex_or_base64(client: httpx.AsyncClient) -> None:
    body = b'{"action": "opened"}'
    digest = hmac.new(GITHUB_SECRET, body, hashlib.sha256).digest()
    for signature in (f"sha256={digest.hex()}", digest.hex(), base64.b64encode(digest).decode(),
                      base64.urlsafe_b64encode(digest).decode().rstrip("=")):
        r = await client.post("/webhooks/github", content=body, headers={"x-hub-signature-256": signature})
        assert r.status_code == 200 and r.json() == {"bytes": len(body)}, (signature, r.text)
    wrong = hmac.new(b"another secret", body, hashlib.sha256).hexdigest()
    for headers in ({"x-hub-signature-256": f"sha256={wrong}"}, {"x-hub-signature-256": "sha256=zz"}, {}):
        r = await client.post("/webhooks/github", content=body, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "WebhookVerificationFailed", r.text
    r = await client.post("/webhooks/github", content=body + b" ", headers={"x-hub-signature-256": digest.hex()})
    assert r.status_code == 401


def test_hmac_verification_in_process() -> None:
    digest = hmac.new(b"k", b"body", hashlib.sha256).hexdigest()
    verify_hmac_signature(b"body", f"SHA256={digest}", "k")
    with pytest.raises(WebhookVerificationError, match="the signature header is missing"):
        verify_hmac_signature(b"body", None, "k")
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_hmac_signature(b"body", digest[:-1] + "0", "k")


# -- the handler: ctx, errors, limits ---------------------------------------------------------------

async def test_a_handler_runs_a_mutation_then_a_query(client: httpx.AsyncClient) -> None:
    r = await client.post("/notes", json={"text": "from an HTTP action"})
    assert r.status_code == 200 and "from an HTTP action" in r.json()["texts"]


async def test_a_streaming_response(client: httpx.AsyncClient) -> None:
    parts = []
    async with client.stream("GET", "/stream") as r:
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
        async for part in r.aiter_text():
            parts.append(part)
    assert "".join(parts) == "".join(f"part {i}\n" for i in range(5))


async def test_an_exception_is_500_with_a_request_id_and_no_internals(client: httpx.AsyncClient,
                                                                       server: ServerProcess) -> None:
    r = await client.get("/boom")
    assert r.status_code == 500
    request_id = r.headers["x-request-id"]
    assert r.json() == {"code": "InternalServerError", "message": f"[Request ID: {request_id}] Server Error"}
    assert "internal detail" not in r.text and "Traceback" not in r.text
    log = server.log()  # the server log has all of it
    assert f"HTTP action GET /boom failed [request {request_id}]" in log and "Traceback" in log
    assert "ValueError: the internal detail that must not leak" in log

    r = await client.get("/not-a-response")
    assert r.status_code == 500 and r.json()["message"] == f"[Request ID: {r.headers['x-request-id']}] Server Error"
    assert "returned dict, not a starlette.responses.Response" in server.log()


async def test_in_dev_mode_the_500_says_what_went_wrong(start_server: Callable[..., ServerProcess]) -> None:
    dev = start_server("dev", app_dir=APP)
    async with httpx.AsyncClient(base_url=dev.url) as c:
        r = await c.get("/boom")
        assert r.status_code == 500
        message = r.json()["message"]
        assert message.startswith(f"[Request ID: {r.headers['x-request-id']}] Uncaught ValueError: the internal detail")
        assert 'functions/http.py", line' in message and "server/" not in message  # the app's frames only
        r = await c.get("/not-a-response")
        assert "TypeError: HTTP action GET /not-a-response returned dict, not a starlette.responses.Response" in r.json()["message"]


async def test_a_handler_blocking_the_loop_is_stopped_and_the_server_goes_on(client: httpx.AsyncClient,
                                                                             server: ServerProcess) -> None:
    began = time.monotonic()
    blocked = asyncio.create_task(client.get("/block"))
    await asyncio.sleep(0.2)
    assert (await client.get("/hello")).status_code == 200  # answered once the handler is stopped
    r = await blocked
    assert time.monotonic() - began < 10
    assert r.status_code == 500
    assert r.json()["message"] == f"[Request ID: {r.headers['x-request-id']}] GET /block ran longer than 1 s without awaiting"

    parts: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):  # the body had started: the connection is cut
        async with client.stream("GET", "/stream-then-block") as r:
            async for part in r.aiter_bytes():
                parts.append(part)
    assert b"".join(parts) == b"first part\n"
    assert (await client.get("/_ripple/health")).status_code == 200
    assert server.metrics()['ripple_http_action_requests_total{route="GET /stream-then-block",status="cut"}'] >= 1


async def test_a_bad_bearer_token_reaches_the_handler_whose_identity_check_fails(client: httpx.AsyncClient,
                                                                                 server: ServerProcess) -> None:
    """As in Convex: the Authorization header may be the app's own, so the request goes through;
    asking for the identity then raises why the token did not authenticate."""
    bad = {"authorization": "Bearer not-a-token"}
    assert (await client.get("/auth-header", headers=bad)).json() == {"authorization": "Bearer not-a-token"}
    assert (await client.get("/whoami")).json() == {"identity": None}
    assert (await client.get("/whoami", headers={"authorization": "Basic dXNlcjpwdw=="})).json() == {"identity": None}
    r = await client.get("/whoami", headers=bad)  # the reason, uncaught, answers 401 (not a server error)
    assert r.status_code == 401 and r.json()["code"] == "Unauthenticated"
    assert "no auth providers are configured" in r.json()["message"]


async def test_log_lines_and_metrics(client: httpx.AsyncClient, server: ServerProcess) -> None:
    assert (await client.get("/print")).status_code == 200
    assert "[H GET /print] [LOG] printed by an HTTP action" in server.log()
    assert (await client.get("/hello")).status_code == 200
    metrics = server.metrics()
    assert metrics['ripple_http_action_requests_total{route="GET /hello",status="200"}'] >= 1
    assert metrics['ripple_http_action_requests_total{route="none",status="404"}'] >= 1
    assert metrics['ripple_http_action_duration_seconds_count{route="GET /print"}'] >= 1
    assert metrics['ripple_http_action_duration_seconds_bucket{le="+Inf",route="GET /print"}'] >= 1


# -- ripple dev: load errors and reloads ------------------------------------------------------------

def test_dev_reports_a_bad_route_serves_the_rest_and_reloads_http_py(
    start_server: Callable[..., ServerProcess], tmp_path: Path,
) -> None:
    app = app_with_routes(tmp_path, '@http.route("/api/mine", methods=["GET"])\nasync def mine(ctx, request):\n    return None\n')
    dev = start_server("dev", app_dir=app)
    health = httpx.get(f"{dev.url}/_ripple/health").json()
    assert "route path '/api/mine' is under /api/" in health["loadErrors"]["functions/http.py"]
    assert httpx.post(f"{dev.url}/api/query", json={"path": "notes:texts", "args": {}}).json()["status"] == "success"
    assert httpx.get(f"{dev.url}/fresh").status_code == 404

    fixed = HTTP_PY + '@http.route("/fresh", methods=["GET"])\nasync def fresh(ctx, request):\n    return PlainTextResponse("new route")\n'
    deadline = time.monotonic() + 30
    while httpx.get(f"{dev.url}/fresh").text != "new route":
        assert time.monotonic() < deadline, dev.log()[-3000:]
        (app / "functions" / "http.py").write_text(fixed)  # (re)written: the watcher may start late
        time.sleep(0.3)
    assert "loadErrors" not in httpx.get(f"{dev.url}/_ripple/health").json()

    changed = fixed.replace('"new route"', '"changed again"')
    deadline = time.monotonic() + 30
    while httpx.get(f"{dev.url}/fresh").text != "changed again":
        assert time.monotonic() < deadline, dev.log()[-3000:]
        (app / "functions" / "http.py").write_text(changed)
        time.sleep(0.3)
