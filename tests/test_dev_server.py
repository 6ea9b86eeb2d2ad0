"""What `ripple dev` adds for an app with a page (issue 13), against real servers of
tests/apps/devserver: the development issuer (tokens verified over HTTP as any OIDC provider's,
its key reused across restarts), public/ and the JS SDK served, CONVEX_SITE_URL/CONVEX_CLOUD_URL
in every kind of function, dev.env seeding, `ripple run --identity`; and that `ripple serve`
serves the files but never the issuer."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from convex import ConvexClient

from client_sdk import RippleClient
from server.core.env import EnvVarError, parse_env_file

from conftest import APPS, ROOT, ServerProcess, drop_schemas, free_port, launch

pytestmark = pytest.mark.e2e
APP = APPS / "devserver"
SDK = ROOT / "client_sdk" / "js"
INHERITED_NOT = ("RIPPLE_ADMIN_KEY", "RIPPLE_PUBLIC_URL", "RIPPLE_DEV_AUTH_ISSUER", "RIPPLE_URL")


class DevApp:
    """A copy of the app (with symlinks out of public/ added) and `ripple <command>` servers of
    it on one schema, which survive a restart."""

    def __init__(self, root: Path, pg_url: str) -> None:
        self.dir = root / "app"
        shutil.copytree(APP, self.dir)
        (root / "secret.txt").write_text("outside public/")
        os.symlink(root / "secret.txt", self.dir / "public" / "outside.txt")
        os.symlink(root, self.dir / "public" / "up")
        self.root, self.pg_url = root, pg_url
        self.schema = "t_" + secrets.token_hex(6)
        self.starts = 0

    def start(self, command: str = "dev", schema: str | None = None, port: int | None = None) -> ServerProcess:
        self.starts += 1
        port = port or free_port()
        env = {k: v for k, v in os.environ.items() if k not in INHERITED_NOT}
        env.update({"DATABASE_URL": self.pg_url, "RIPPLE_DB_SCHEMA": schema or self.schema})
        if command == "serve":
            env["RIPPLE_ADMIN_KEY"] = "k-serve"
        cmd = [sys.executable, "-m", "server.cli", command, "--port", str(port), "--dir", str(self.dir)]
        return launch(cmd, port, self.root / f"{command}-{self.starts}.log", env)

    def drop(self, *schemas: str) -> None:
        drop_schemas(self.pg_url, *schemas)


@pytest.fixture(scope="module")
def app(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevApp]:
    yield DevApp(tmp_path_factory.mktemp("devserver"), pg_url)


@pytest.fixture(scope="module")
def dev(app: DevApp) -> Iterator[ServerProcess]:
    server = app.start()
    try:
        yield server
    finally:
        server.stop()
        app.drop(app.schema)


def mint(server: ServerProcess, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/_ripple/dev-auth/token", json=body, timeout=10)


def raw_get(server: ServerProcess, path: str, method: str = "GET", headers: dict[str, str] | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    """A request with `path` sent exactly as written (httpx would normalize `..` away)."""
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# -- the development issuer -----------------------------------------------------------------------


def test_dev_issuer_tokens_sign_users_in_over_the_websocket(dev: ServerProcess, app: DevApp) -> None:
    issuer = f"{dev.url}/_ripple/dev-auth"
    discovery = httpx.get(f"{issuer}/.well-known/openid-configuration").json()
    assert discovery["issuer"] == issuer and discovery["jwks_uri"] == f"{issuer}/jwks"
    keys = httpx.get(discovery["jwks_uri"]).json()["keys"]
    assert [(k["kty"], k["crv"], k["alg"]) for k in keys] == [("EC", "P-256", "ES256")]
    key_file = app.dir / ".ripple" / "dev_auth_key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    minted = mint(dev, subject="riley", name="Riley", email="riley@example.test", role="reviewer", ttlSeconds=120)
    assert minted.status_code == 200
    token, expires_at = minted.json()["token"], minted.json()["expiresAt"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == issuer and claims["aud"] == "convex" and claims["exp"] - claims["iat"] == 120
    assert expires_at == claims["exp"] * 1000

    async def whoami() -> Any:
        async with RippleClient(dev.url, token=token) as client:
            return await client.query("me:whoami")

    assert asyncio.run(whoami()) == {"tokenIdentifier": f"{issuer}|riley", "subject": "riley", "issuer": issuer, "name": "Riley",
                  "email": "riley@example.test", "role": "reviewer"}
    live = ConvexClient(dev.url)  # the official PyPI client, over its own websocket
    live.set_auth(mint(dev, subject="casey").json()["token"])
    casey = live.query("me:whoami")
    assert casey["subject"] == "casey" and "role" not in casey and "name" not in casey


@pytest.mark.parametrize(("body", "named"), [
    ({}, "`subject` is required"),
    ({"subject": ""}, "`subject` must be 1 to 256"),
    ({"subject": "x" * 257}, "`subject` must be 1 to 256"),
    ({"subject": 7}, "`subject` must be a string"),
    ({"subject": "u", "role": ["reviewer"]}, "`role` must be a string"),
    ({"subject": "u", "email": 1}, "`email` must be a string"),
    ({"subject": "u", "ttlSeconds": 0}, "`ttlSeconds` must be a whole number from 1 to 86400"),
    ({"subject": "u", "ttlSeconds": 86401}, "`ttlSeconds`"),
    ({"subject": "u", "ttlSeconds": "60"}, "`ttlSeconds`"),
    ({"subject": "u", "admin": True}, "unknown field(s) admin"),
    (["u"], "the body must be a JSON object"),
])
def test_the_token_endpoint_names_the_field_it_refuses(dev: ServerProcess, body: Any, named: str) -> None:
    response = httpx.post(f"{dev.url}/_ripple/dev-auth/token", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == "BadTokenRequest" and named in response.json()["message"]


# -- public/ and the SDK --------------------------------------------------------------------------


def test_public_files_are_served_where_no_route_is(dev: ServerProcess, app: DevApp) -> None:
    index = httpx.get(f"{dev.url}/")
    assert index.status_code == 200 and index.text == (app.dir / "public" / "index.html").read_text()
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.headers["cache-control"] == "no-cache" and index.headers["last-modified"]
    nested = httpx.get(f"{dev.url}/nested/app.js")
    assert nested.headers["content-type"] == "text/javascript; charset=utf-8" and "RippleClient" in nested.text
    assert httpx.get(f"{dev.url}/nested/style.css").headers["content-type"] == "text/css; charset=utf-8"
    assert httpx.get(f"{dev.url}/nested/").status_code == 404

    head = httpx.head(f"{dev.url}/nested/app.js")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(nested.content)) and head.headers["etag"] == nested.headers["etag"]
    again = httpx.get(f"{dev.url}/nested/app.js", headers={"If-None-Match": nested.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    # A route wins over a file of the same path; an HTTP action still answers its own path.
    assert httpx.get(f"{dev.url}/routed.txt").text == "from the route"
    assert httpx.get(f"{dev.url}/site-url").json()["site"] == dev.url
    missing = httpx.get(f"{dev.url}/nope.html")
    assert missing.status_code == 404 and missing.json() == {"code": "NotFound", "message": "no route for GET /nope.html"}
    assert httpx.post(f"{dev.url}/index.html").status_code == 404  # files answer GET and HEAD only


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/nested/..%2f..%2fsecret.txt", "/nested/%2e%2e/%2e%2e/secret.txt",
    "/..\\secret.txt", "/.secret", "/nested/./app.js", "/outside.txt", "/up/secret.txt", "/%00",
])
def test_nothing_outside_public_is_reachable(dev: ServerProcess, path: str) -> None:
    status, _, body = raw_get(dev, path)
    assert status in (400, 404) and b"outside public/" not in body and b"hidden" not in body


def test_the_js_sdk_is_served_and_its_imports_resolve(dev: ServerProcess, tmp_path: Path) -> None:
    served = httpx.get(f"{dev.url}/_ripple/sdk/ripple.js")
    assert served.status_code == 200 and served.content == (SDK / "ripple.js").read_bytes()
    assert served.headers["content-type"] == "text/javascript; charset=utf-8"
    # Every module ripple.js imports, directly or not, is served next to it.
    pending, fetched = ["ripple.js"], {}
    while pending:
        name = pending.pop()
        response = httpx.get(f"{dev.url}/_ripple/sdk/{name}")
        assert response.status_code == 200, name
        fetched[name] = response.content
        for found in re.findall(r'from "\./([\w-]+\.js)"', response.text):
            if found not in fetched and found not in pending:
                pending.append(found)
    assert {"ripple.js", "protocol.js", "values.js", "auth.js", "pagination.js"} <= set(fetched)
    for name in ("package.json", "ripple.d.ts", "..%2fclient.py", "nope.js"):
        assert httpx.get(f"{dev.url}/_ripple/sdk/{name}").status_code == 404
    if shutil.which("node"):  # the served bytes load as ES modules
        for name, body in fetched.items():
            (tmp_path / name).write_bytes(body)
        (tmp_path / "package.json").write_text('{"type": "module"}')
        run = subprocess.run(["node", "-e", "import('./ripple.js').then(m => console.log(typeof m.RippleClient))"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert run.stdout.strip() == "function", run.stderr


def test_dev_prints_the_app_page(dev: ServerProcess) -> None:
    assert f"App page: {dev.url}/" in dev.log()


# -- built-in variables, dev.env, ripple run --identity -------------------------------------------


def test_built_in_urls_in_every_kind_of_function(dev: ServerProcess) -> None:
    async def calls() -> tuple[Any, Any]:
        async with RippleClient(dev.url) as client:
            return await client.query("me:urls"), await client.action("me:urls_in_action")

    query, action = asyncio.run(calls())
    assert query == {"site": dev.url, "cloud": dev.url, "listed": ["CONVEX_CLOUD_URL", "CONVEX_SITE_URL"]}
    assert action == {"site": dev.url, "cloud": dev.url}
    assert httpx.get(f"{dev.url}/site-url").json() == {"site": dev.url, "cloud": dev.url}


def test_built_in_urls_cannot_be_set_or_listed(dev: ServerProcess, app: DevApp) -> None:
    key = (app.dir / ".ripple" / "admin_key").read_text().strip()
    headers = {"Authorization": f"Convex {key}"}
    refused = httpx.post(f"{dev.url}/api/update_environment_variables", headers=headers,
                         json={"changes": [{"name": "CONVEX_SITE_URL", "value": "https://elsewhere.test"}]})
    assert refused.status_code == 400 and refused.json()["code"] == "EnvVarNameForbidden"
    listed = httpx.get(f"{dev.url}/api/list_environment_variables", headers=headers).json()["environmentVariables"]
    assert not any(name.startswith("CONVEX_") for name in listed)
    cli = ripple(app, "env", "remove", "CONVEX_CLOUD_URL")
    assert cli.returncode == 1 and "is built-in and cannot be overridden" in cli.stderr


def test_dev_env_seeds_variables_by_name_only(dev: ServerProcess) -> None:
    async def read(name: str) -> Any:
        async with RippleClient(dev.url) as client:
            return await client.query("me:variable", {"name": name})

    assert asyncio.run(read("GREETING")) == "hello from dev.env"
    assert asyncio.run(read("QUOTED")) == "  spaced  "
    log = dev.log()
    assert "Environment: set GREETING, QUOTED from dev.env" in log
    assert "hello from dev.env" not in log  # names, never values


@pytest.mark.parametrize(("text", "error"), [
    ("A=1\nnot a variable\n", "dev.env line 2: expected NAME=value"),
    ("# fine\n9LIVES=1\n", "dev.env line 2: the environment variable name '9LIVES' is invalid"),
    ("A=1\nA=2\n", "dev.env line 2: A is set twice"),
    ("CONVEX_SITE_URL=http://x\n", "dev.env line 1: environment variable CONVEX_SITE_URL is built-in"),
    ("BIG=" + "x" * 9000, "dev.env line 1: the value of BIG is 9000 bytes"),
])
def test_dev_env_refuses_what_it_cannot_read(text: str, error: str) -> None:
    with pytest.raises(EnvVarError, match=re.escape(error)):
        parse_env_file(text, "dev.env")


def test_dev_env_syntax() -> None:
    text = "# comment\n\n  A = 1 \nB='two words'\nC=\"\"\nD=a=b # not a comment\n"
    assert [(c.name, c.value) for c in parse_env_file(text, "dev.env")] == [
        ("A", "1"), ("B", "two words"), ("C", ""), ("D", "a=b # not a comment")]


def ripple(app: DevApp, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_NOT}
    return subprocess.run([sys.executable, "-m", "server.cli", *args, "--dir", str(app.dir)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=60)


def test_run_as_an_identity(dev: ServerProcess, app: DevApp) -> None:
    out = ripple(app, "run", "me:whoami", "--identity", '{"subject": "u1", "role": "reviewer"}')
    assert out.returncode == 0, out.stderr
    issuer = f"{dev.url}/_ripple/dev-auth"  # under ripple dev, the issuer defaults to its own
    assert json.loads(out.stdout) == {"tokenIdentifier": f"{issuer}|u1", "subject": "u1", "issuer": issuer,
                                      "role": "reviewer"}
    named = ripple(app, "run", "me:whoami", "--identity", '{"tokenIdentifier": "https://idp.test|u2", "name": "Uma"}')
    assert json.loads(named.stdout) == {"tokenIdentifier": "https://idp.test|u2", "name": "Uma"}
    assert json.loads(ripple(app, "run", "me:whoami").stdout) is None  # the admin alone is no user
    bad = ripple(app, "run", "me:whoami", "--identity", '["u1"]')
    assert bad.returncode == 2 and "--identity must be a JSON object" in bad.stderr


# -- ripple serve, and a restart ----------------------------------------------------------------


def test_serve_serves_files_but_never_the_issuer(app: DevApp) -> None:
    schema = "t_" + secrets.token_hex(6)
    server = app.start("serve", schema=schema)
    try:
        assert httpx.get(f"{server.url}/").text == (app.dir / "public" / "index.html").read_text()
        assert httpx.get(f"{server.url}/_ripple/sdk/ripple.js").content == (SDK / "ripple.js").read_bytes()
        for path in ("/.well-known/openid-configuration", "/jwks"):
            assert httpx.get(f"{server.url}/_ripple/dev-auth{path}").status_code == 404
        assert httpx.post(f"{server.url}/_ripple/dev-auth/token", json={"subject": "u"}).status_code == 404
        log = server.log()
        assert "App page:" not in log and "dev.env" not in log
    finally:
        server.stop()
        app.drop(schema)


def test_tokens_outlive_a_restart_and_dev_env_never_overwrites(app: DevApp) -> None:
    """A dev server of its own (the module's keeps serving the other tests), restarted on the same
    port, schema and key file."""
    schema, port = "t_" + secrets.token_hex(6), free_port()
    first = app.start(schema=schema, port=port)
    try:
        token = mint(first, subject="casey", name="Casey").json()["token"]
        key = (app.dir / ".ripple" / "admin_key").read_text().strip()
        httpx.post(f"{first.url}/api/update_environment_variables", headers={"Authorization": f"Convex {key}"},
                   json={"changes": [{"name": "GREETING", "value": "changed by hand"}]}).raise_for_status()
        first.stop()
        restarted = app.start(schema=schema, port=port)
        try:
            async def check() -> None:
                async with RippleClient(restarted.url, token=token) as client:
                    assert (await client.query("me:whoami"))["name"] == "Casey"
                    assert await client.query("me:variable", {"name": "GREETING"}) == "changed by hand"

            asyncio.run(check())
            assert "Environment: dev.env sets nothing; already set: GREETING, QUOTED" in restarted.log()
        finally:
            restarted.stop()
    finally:
        first.stop()
        app.drop(schema)
