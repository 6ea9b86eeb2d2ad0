"""Authentication end to end (issue 12) against `ripple serve` for tests/apps/auth and a real OIDC
issuer on loopback (tests/oidc_issuer.py): the HTTP API's Bearer tokens, the websocket's
Authenticate (identity version, queries re-run as the new identity, message order, AuthError,
expiry, an admin acting as a user), scheduled functions running as no one, and the PyPI
`convex` clients' and our Python SDK's set_auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from convex import ConvexClient
from convex.http_client import ConvexHttpClient

from client_sdk import AuthenticationError, RippleClient

from conftest import AUTH_APP, ServerProcess, Watcher, unreachable_url, until
from oidc_issuer import OidcIssuer, SigningKey

pytestmark = pytest.mark.e2e
ADMIN_KEY = "k-auth-tests"


@pytest.fixture
def unreachable() -> str:
    """The issuer nobody listens on that the server's auth_config.py lists."""
    return unreachable_url()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess], oidc_issuer: OidcIssuer, unreachable: str) -> ServerProcess:
    env = {**oidc_issuer.app_env(unreachable), "RIPPLE_ADMIN_KEY": ADMIN_KEY,
           "RIPPLE_AUTH_CLOCK_SKEW_SECONDS": "0", "RIPPLE_AUTH_KEYS_MIN_REFRESH_SECONDS": "0.5"}
    return start_server("serve", app_dir=AUTH_APP, extra_env=env)


async def post(server: ServerProcess, kind: str, path: str, args: dict[str, Any] | None = None,
               token: str | None = None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return await client.post(f"/api/{kind}", json={"path": path, "args": args or {}}, headers=headers)


# -- HTTP API -------------------------------------------------------------------------------------


async def test_http_bearer_tokens(server: ServerProcess, oidc_issuer: OidcIssuer, unreachable: str) -> None:
    alice = oidc_issuer.token("alice", email="a@example.com")
    response = await post(server, "query", "me:whoami", token=alice)
    assert response.status_code == 200
    assert response.json()["value"] == {"email": "a@example.com", "issuer": oidc_issuer.url, "subject": "alice",
                                        "tokenIdentifier": f"{oidc_issuer.url}|alice"}
    assert (await post(server, "mutation", "me:add_note", {"text": "hi"}, alice)).json()["value"] == f"{oidc_issuer.url}|alice"
    assert (await post(server, "query", "me:my_notes", token=alice)).json()["value"] == ["hi"]
    assert (await post(server, "query", "me:my_notes", token=oidc_issuer.token("bob"))).json()["value"] == []
    action = (await post(server, "action", "me:whoami_action", token=alice)).json()["value"]
    assert action["action"] == action["query"] and action["action"]["subject"] == "alice"

    now = int(time.time())
    bad = {
        "expired": (oidc_issuer.token("alice", ttl=-60), "expired"),
        "not yet valid": (oidc_issuer.token("alice", nbf=now + 600), "not valid yet"),
        "wrong audience": (oidc_issuer.token("alice", aud="other"), "audience"),
        "wrong issuer": (oidc_issuer.token("alice", iss="https://evil.example"), "no auth provider has the token's issuer"),
        "unknown kid": (SigningKey("RS256").sign(oidc_issuer.claims("alice")), "has the token's kid"),
        "100 KB": (oidc_issuer.token("alice", padding="x" * 100_000), "tokens over 16384 bytes are refused"),
        "garbage": ("x.y.z", "not a valid JWT"),
        "unreachable issuer": (oidc_issuer.key.sign({**oidc_issuer.claims("alice"), "iss": unreachable}),
                               "could not fetch the keys of issuer"),
    }
    for case, (token, message) in bad.items():
        response = await post(server, "query", "me:whoami", token=token)
        assert response.status_code == 401, case
        assert response.json()["code"] == "Unauthenticated", case
        assert message in response.json()["message"], (case, response.json())
    assert (await post(server, "query", "me:whoami")).json()["value"] is None  # still serving
    assert (await post(server, "query", "me:whoami", token=alice)).json()["value"]["subject"] == "alice"


async def test_scheduled_functions_run_as_no_one(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    """The mutation scheduling it has an identity; the scheduled function has none (as in Convex)."""
    response = await post(server, "mutation", "me:schedule_record", {"label": "job"}, oidc_issuer.token("alice"))
    assert response.json()["status"] == "success"
    deadline = time.monotonic() + 15
    while (seen := (await post(server, "query", "me:seen", {"label": "job"})).json()["value"]) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert seen == {"who": None}


# -- websocket --------------------------------------------------------------------------------------


class Socket:
    """A raw sync-protocol websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.request_id = 0
        self.results: dict[int, Any] = {}  # the latest value of each query, from the Transitions read
        self.transitions: list[dict[str, Any]] = []  # every Transition read

    @classmethod
    async def open(cls, server: ServerProcess, stack: Any) -> Socket:
        ws = await stack.enter_async_context(websockets.connect(server.url.replace("http://", "ws://") + "/api/sync",
                                                                max_size=None))
        await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0}))
        return cls(ws)

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def authenticate(self, base: int, token: str) -> None:
        await self.send(type="Authenticate", baseVersion=base, tokenType="User", value=token)

    async def mutation(self, path: str, args: dict[str, Any]) -> int:
        self.request_id += 1
        await self.send(type="Mutation", requestId=self.request_id, udfPath=path, args=[args])
        return self.request_id

    async def next(self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda m: True,
                   timeout: float = 10) -> dict[str, Any]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if message["type"] == "Transition":
                self.results.update(updates(message))
                self.transitions.append(message)
            if message["type"] == kind and where(message):
                return message


def updates(transition: dict[str, Any]) -> dict[int, Any]:
    return {m["queryId"]: m.get("value") for m in transition["modifications"] if m["type"] == "QueryUpdated"}


async def test_authenticate_reruns_every_query_as_the_new_identity(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    async with contextlib.AsyncExitStack() as stack:
        ws = await Socket.open(server, stack)
        await ws.send(type="ModifyQuerySet", baseVersion=0, newVersion=1, modifications=[
            {"type": "Add", "queryId": 0, "udfPath": "me:whoami", "args": [{}]},
            {"type": "Add", "queryId": 1, "udfPath": "me:my_notes", "args": [{}]}])
        first = await ws.next("Transition", lambda m: bool(m["modifications"]))
        assert updates(first) == {0: None, 1: []} and first["endVersion"]["identity"] == 0
        # Authenticate, then at once a mutation: it runs as the new identity (nothing after an
        # Authenticate runs as the one before).
        await ws.authenticate(0, oidc_issuer.token("alice"))
        request = await ws.mutation("me:add_note", {"text": "first"})
        response = await ws.next("MutationResponse")
        assert response["requestId"] == request and response["result"] == f"{oidc_issuer.url}|alice"
        if ws.results.get(1) != ["first"]:
            await ws.next("Transition", lambda m: updates(m).get(1) == ["first"])
        (moved,) = [t for t in ws.transitions if t["endVersion"]["identity"] != t["startVersion"]["identity"]]
        assert moved["startVersion"]["identity"] == 0 and moved["endVersion"]["identity"] == 1
        assert updates(moved)[0]["subject"] == "alice"  # re-run as alice in the Transition that moved the identity
        # A mutation sent before the next Authenticate still runs as alice.
        request = await ws.mutation("me:add_note", {"text": "second"})
        await ws.authenticate(1, oidc_issuer.token("bob"))
        response = await ws.next("MutationResponse")
        assert response["result"] == f"{oidc_issuer.url}|alice"
        if not any(t["endVersion"]["identity"] == 2 for t in ws.transitions):
            await ws.next("Transition", lambda m: m["endVersion"]["identity"] == 2)
        (as_bob,) = [t for t in ws.transitions if t["startVersion"]["identity"] == 1 and t["endVersion"]["identity"] == 2]
        assert updates(as_bob)[0]["subject"] == "bob" and updates(as_bob)[1] == []
        # Signing out is an Authenticate too.
        await ws.send(type="Authenticate", baseVersion=2, tokenType="None")
        out = await ws.next("Transition", lambda m: m["endVersion"]["identity"] == 3)
        assert updates(out)[0] is None


async def test_two_identities_on_one_query_get_their_own_results(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    async with contextlib.AsyncExitStack() as stack:
        sockets = {}
        for who in ("alice", "bob", "alice2"):
            ws = await Socket.open(server, stack)
            await ws.authenticate(0, oidc_issuer.token(who.rstrip("2")))
            await ws.send(type="ModifyQuerySet", baseVersion=0, newVersion=1, modifications=[
                {"type": "Add", "queryId": 0, "udfPath": "me:my_notes", "args": [{}]}])
            assert updates(await ws.next("Transition", lambda m: bool(m["modifications"]))) == {0: []}
            sockets[who] = ws
        await sockets["alice"].mutation("me:add_note", {"text": "mine"})
        assert updates(await sockets["alice"].next("Transition", lambda m: bool(m["modifications"]))) == {0: ["mine"]}
        assert updates(await sockets["alice2"].next("Transition", lambda m: bool(m["modifications"]))) == {0: ["mine"]}
        await sockets["bob"].mutation("me:add_note", {"text": "his"})
        assert updates(await sockets["bob"].next("Transition", lambda m: bool(m["modifications"]))) == {0: ["his"]}
        for who in ("alice", "alice2"):  # alice's result never changed: nothing of bob's reached her
            with pytest.raises(TimeoutError):
                await sockets[who].next("Transition", lambda m: bool(m["modifications"]), timeout=1)


async def test_bad_tokens_get_auth_error_and_a_close(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    for token, message in [(oidc_issuer.token("alice", aud="other"), "audience"),
                           (oidc_issuer.token("alice", padding="x" * 100_000), "tokens over 16384 bytes are refused"),
                           (oidc_issuer.token("alice", ttl=-5), "expired")]:
        async with contextlib.AsyncExitStack() as stack:
            ws = await Socket.open(server, stack)
            await ws.authenticate(0, token)
            error = await ws.next("AuthError")
            assert error["baseVersion"] == 0 and error["authUpdateAttempted"] is True and message in error["error"]
            with pytest.raises(websockets.ConnectionClosed):
                await ws.next("Transition", timeout=5)


async def test_an_identity_stops_at_its_tokens_expiry(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    """AuthError (no update attempted) at the expiry, then a close, as Convex does."""
    async with contextlib.AsyncExitStack() as stack:
        ws = await Socket.open(server, stack)
        await ws.authenticate(0, oidc_issuer.token("alice", ttl=2))
        await ws.send(type="ModifyQuerySet", baseVersion=0, newVersion=1, modifications=[
            {"type": "Add", "queryId": 0, "udfPath": "me:whoami", "args": [{}]}])
        assert updates(await ws.next("Transition", lambda m: bool(m["modifications"])))[0]["subject"] == "alice"
        started = time.monotonic()
        error = await ws.next("AuthError")
        assert error == {"type": "AuthError", "baseVersion": 1, "authUpdateAttempted": False, "error": error["error"]}
        assert "expired" in error["error"] and time.monotonic() - started < 3
        with pytest.raises(websockets.ConnectionClosed):
            await ws.next("Transition", timeout=5)


async def test_an_admin_may_act_as_a_user(server: ServerProcess) -> None:
    async with contextlib.AsyncExitStack() as stack:
        ws = await Socket.open(server, stack)
        await ws.send(type="Authenticate", baseVersion=0, tokenType="Admin", value=ADMIN_KEY,
                      impersonating={"issuer": "https://dash.example", "subject": "u1", "email": "u1@example.com"})
        await ws.send(type="ModifyQuerySet", baseVersion=0, newVersion=1, modifications=[
            {"type": "Add", "queryId": 0, "udfPath": "me:whoami", "args": [{}]}])
        transition = await ws.next("Transition", lambda m: bool(m["modifications"]))
        assert updates(transition)[0] == {"email": "u1@example.com", "issuer": "https://dash.example", "subject": "u1",
                                          "tokenIdentifier": "https://dash.example|u1"}
        ws2 = await Socket.open(server, stack)
        await ws2.send(type="Authenticate", baseVersion=0, tokenType="Admin", value="wrong",
                       impersonating={"tokenIdentifier": "x|y"})
        assert (await ws2.next("AuthError"))["error"] == "the admin key is not valid"
    # Over HTTP: `Convex <key>:<base64 of the identity>`, as Convex's dashboard sends it.
    acting = base64.b64encode(json.dumps({"issuer": "https://dash.example", "subject": "u2"}).encode()).decode()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.post("/api/query", json={"path": "me:whoami", "args": {}},
                                     headers={"Authorization": f"Convex {ADMIN_KEY}:{acting}"})
        assert response.json()["value"]["tokenIdentifier"] == "https://dash.example|u2"
        response = await client.post("/api/query", json={"path": "me:whoami", "args": {}},
                                     headers={"Authorization": f"Convex {ADMIN_KEY}:not-base64!"})
        assert response.status_code == 401 and "identity to act as" in response.json()["message"]


# -- the PyPI convex clients and our SDK -----------------------------------------------------------


async def test_pypi_convex_clients_set_auth(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    token = oidc_issuer.token("alice", name="Alice")
    http = ConvexHttpClient(server.url)
    http.set_auth(token)
    assert (await asyncio.to_thread(http.query, "me:whoami"))["name"] == "Alice"
    live = ConvexClient(server.url)
    live.set_auth(oidc_issuer.token("bob"))
    assert (await asyncio.to_thread(live.query, "me:whoami"))["subject"] == "bob"
    assert await asyncio.to_thread(live.mutation, "me:add_note", {"text": "pypi"}) == f"{oidc_issuer.url}|bob"
    live.clear_auth()
    assert await asyncio.to_thread(live.query, "me:whoami") is None


async def test_python_sdk_with_a_token_and_with_a_refreshing_fetcher(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    async with RippleClient(server.url, token=oidc_issuer.token("alice")) as client:
        assert (await client.query("me:whoami"))["subject"] == "alice"
    fetched: list[bool] = []
    changes: list[bool] = []

    async def fetch(force_refresh: bool) -> str:
        fetched.append(force_refresh)
        return oidc_issuer.token("bob", ttl=12, n=len(fetched))  # refreshed 10 s before it expires

    async with RippleClient(server.url) as client:
        client.set_auth(fetch, changes.append)
        watcher = Watcher(client, "me:whoami", {})
        await until(lambda: (watcher.latest or {}).get("n") == 1)
        assert changes == [True]
        await until(lambda: (watcher.latest or {}).get("n") == 2, timeout=10)  # a fresh token, used
        assert fetched[:2] == [False, True] and changes == [True]
        await watcher.stop()


async def test_python_sdk_bad_tokens(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    changes: list[bool] = []

    async def fetch(force_refresh: bool) -> str:
        return oidc_issuer.token("bob", aud="other")

    async with RippleClient(server.url) as client:
        client.set_auth(fetch, changes.append)
        await until(lambda: changes == [False])
        assert await client.query("me:whoami") is None  # goes on unauthenticated
    async with RippleClient(server.url, token=oidc_issuer.token("bob", ttl=-30)) as client:
        with pytest.raises(AuthenticationError, match="expired"):
            await client.mutation("me:add_note", {"text": "x"})
        assert await client.query("me:whoami") is None


async def test_ripple_dev_serves_on_with_a_bad_auth_config(start_server: Callable[..., ServerProcess],
                                                           oidc_issuer: OidcIssuer, tmp_path: Path) -> None:
    """A mistake in auth_config.py is a load error in `ripple dev`: the rest of the app is served,
    tokens are refused naming it, and fixing the file makes tokens work without a restart."""
    app = tmp_path / "app"
    shutil.copytree(AUTH_APP, app, ignore=shutil.ignore_patterns(".ripple", "__pycache__"))
    config = app / "functions" / "auth_config.py"
    good = config.read_text()
    config.write_text(good.replace('"algorithm": "ES256",\n     "application_id"', '"algorithm": "HS256",\n     "application_id"'))
    server = start_server("dev", app_dir=app, extra_env=oidc_issuer.app_env(unreachable_url()))
    assert (await post(server, "query", "me:whoami")).json()["value"] is None
    refused = await post(server, "query", "me:whoami", token=oidc_issuer.token("alice"))
    assert refused.status_code == 401
    assert "functions/auth_config.py: providers[1]: `algorithm` must be one of RS256, ES256" in refused.json()["message"]
    config.write_text(good)
    deadline = time.monotonic() + 20
    while (await post(server, "query", "me:whoami", token=oidc_issuer.token("alice"))).status_code != 200:
        assert time.monotonic() < deadline, server.log()
        await asyncio.sleep(0.2)


# -- HTTP actions, with environment variables -------------------------------------------------------


GREETING = "hello-from-the-environment"


async def test_http_actions_run_as_the_bearer_tokens_identity(server: ServerProcess, oidc_issuer: OidcIssuer) -> None:
    """An HTTP action's ctx.auth is the request's Bearer token (its run_query runs as that user
    too), a token that proves no one answers 401 naming why, and ctx.env reads the deployment's
    variables as set through the admin endpoint, changed without a restart; a value the handler
    prints is masked in the server log, as in functions' log lines."""
    alice = oidc_issuer.token("alice")
    assert (await post(server, "mutation", "me:add_note", {"text": "from http"}, alice)).status_code == 200
    admin = {"Authorization": f"Convex {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.post("/api/update_environment_variables", headers=admin,
                              json={"changes": [{"name": "GREETING", "value": GREETING}]})
        assert r.status_code == 200, r.text
        r = await client.get("/whoami", headers={"Authorization": f"Bearer {alice}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["identity"]["tokenIdentifier"] == f"{oidc_issuer.url}|alice"
        assert body["notes"] == ["from http"] and body["greeting"] == GREETING
        r = await client.get("/whoami")
        assert r.json() == {"identity": None, "notes": [], "greeting": GREETING}
        r = await client.get("/whoami", headers={"Authorization": f"Bearer {oidc_issuer.token('alice', ttl=-60)}"})
        assert r.status_code == 401 and r.json()["code"] == "Unauthenticated" and "expired" in r.json()["message"]
        await client.post("/api/update_environment_variables", headers=admin, json={"changes": [{"name": "GREETING"}]})
        assert (await client.get("/whoami")).json()["greeting"] is None
    assert "greeting: [env GREETING]" in server.log() and GREETING not in server.log()
