"""Token verification (issue 12) against a real OIDC issuer on a loopback port
(tests/oidc_issuer.py), through the Runtime of tests/apps/auth: each way a token can be wrong is
refused with an AuthFailed saying what, the keys are cached, rotated keys are picked up, and
made-up key ids cannot make Ripple hammer the issuer. Also the providers' checks at load, the
identity functions see, and live-query sharing per identity."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from server.config import AuthConfig, Config
from server.core.auth.keys import MAX_DOCUMENT_BYTES, KeySource
from server.core.auth.providers import Provider, load_providers
from server.core.contexts import Identity
from server.core.database import Database
from server.core.runtime import Runtime
from server.core.subscriptions import SubscriptionManager
from server.errors import AppLoadError, AuthFailed

from conftest import AUTH_APP, database_url, open_runtime, unreachable_url
from oidc_issuer import OidcIssuer, SigningKey

SETTINGS = AuthConfig(keys_min_refresh_seconds=0.5, fetch_timeout_seconds=2.0)


@pytest.fixture
async def rt(namespace: str, oidc_issuer: OidcIssuer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Runtime]:
    for name, value in oidc_issuer.app_env(unreachable_url()).items():
        monkeypatch.setenv(name, value)
    async with open_runtime(AUTH_APP, namespace, auth=SETTINGS) as runtime:
        yield runtime


async def refused(rt: Runtime, token: str, match: str) -> str:
    with pytest.raises(AuthFailed, match=match) as caught:
        await rt.authenticate(token)
    return str(caught.value)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


# -- valid tokens and the identity they prove --------------------------------------------------


async def test_a_valid_oidc_token_gives_the_convex_identity(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    token = oidc_issuer.token("alice", name="Alice", email="alice@example.com", email_verified=True,
                              picture="https://img.example/a.png", locale="fr", zoneinfo="Europe/Paris",
                              updated_at=1_700_000_000, address={"formatted": "1 Main St"}, role="admin",
                              jti="one-time", nbf=int(time.time()) - 10, fva=[1, 2])
    identity = await rt.authenticate(token)
    assert dict(identity) == {
        "tokenIdentifier": f"{oidc_issuer.url}|alice", "subject": "alice", "issuer": oidc_issuer.url,
        "name": "Alice", "email": "alice@example.com", "emailVerified": True, "pictureUrl": "https://img.example/a.png",
        "language": "fr", "timezone": "Europe/Paris", "updatedAt": "2023-11-14T22:13:20+00:00", "address": "1 Main St",
        "role": "admin",  # a custom claim, under its own name; jti, nbf, iat, exp, aud and fva are left out
    }
    assert identity.expires_at is not None and identity.expires_at > time.time() + 3500
    # What a function sees: attributes for the standard fields, claims by name.
    outcome = await rt.call("query", "me:fields", {}, identity)
    assert outcome.value == {
        "subject": "alice", "issuer": oidc_issuer.url, "token_identifier": f"{oidc_issuer.url}|alice", "name": "Alice",
        "email": "alice@example.com", "email_verified": True, "picture_url": "https://img.example/a.png",
        "updated_at": "2023-11-14T22:13:20+00:00", "address": "1 Main St", "role": "admin",
    }
    assert (await rt.call("query", "me:whoami", {}, None)).value is None


async def test_two_tokens_of_one_user_give_equal_identities(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    """Equal identities share live queries: what changes with every refresh is left out."""
    first = await rt.authenticate(oidc_issuer.token("alice", ttl=60, jti="a"))
    second = await rt.authenticate(oidc_issuer.token("alice", ttl=600, jti="b", iat=int(time.time()) - 5))
    assert first == second and first.expires_at != second.expires_at


async def test_an_issuer_with_a_trailing_slash_is_the_same_issuer(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    identity = await rt.authenticate(oidc_issuer.token("alice", iss=oidc_issuer.url + "/"))
    assert identity.token_identifier == f"{oidc_issuer.url}/|alice"  # the token's own iss, as Convex keeps it


async def test_clock_skew_is_tolerated_and_is_a_setting(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    await rt.authenticate(oidc_issuer.token("alice", ttl=-2))  # expired 2 s ago: within the 5 s default
    rt.verifier.settings = AuthConfig(clock_skew_seconds=0.0)
    await refused(rt, oidc_issuer.token("alice", ttl=-2), "expired")


# -- refused tokens -------------------------------------------------------------------------------


async def test_expired_and_not_yet_valid_tokens_are_refused(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    now = int(time.time())
    await refused(rt, oidc_issuer.token("alice", ttl=-60), "^the token expired at ")
    await refused(rt, oidc_issuer.token("alice", nbf=now + 600), r"not valid yet \(nbf ")
    await refused(rt, oidc_issuer.token("alice", iat=now + 600, ttl=1200), r"not valid yet \(iat ")


async def test_wrong_audience_and_wrong_issuer_are_refused(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    message = await refused(rt, oidc_issuer.token("alice", aud="someone-else"), "audience")
    assert "'convex'" in message
    await refused(rt, oidc_issuer.token("alice", aud=["a", "b"]), "audience")
    message = await refused(rt, oidc_issuer.token("alice", iss="https://evil.example"), "no auth provider has the token's issuer")
    assert "https://evil.example" in message and oidc_issuer.url in message


async def test_missing_claims_and_garbage_are_refused(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    claims = oidc_issuer.claims("alice")
    await refused(rt, oidc_issuer.key.sign({k: v for k, v in claims.items() if k != "exp"}), "no `exp` claim")
    await refused(rt, oidc_issuer.key.sign({k: v for k, v in claims.items() if k != "sub"}), "no `sub` claim")
    await refused(rt, oidc_issuer.key.sign({k: v for k, v in claims.items() if k != "iss"}), "no `iss`")
    await refused(rt, "x.y.z", "not a valid JWT")
    await refused(rt, "not a token", "not a valid JWT")


async def test_alg_none_and_hs256_with_the_public_key_are_refused(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    claims = oidc_issuer.claims("mallory")
    await refused(rt, unsigned({"alg": "none", "typ": "JWT"}, claims) + ".", "signed with 'none'")
    # HS256 keyed with the issuer's public key, which anyone can fetch from its JWKS.
    public_pem = oidc_issuer.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": oidc_issuer.key.kid}, claims)
    forged = signing_input + "." + b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    await refused(rt, forged, "signed with 'HS256'.*accepts only RS256, ES256")
    assert oidc_issuer.requests["/jwks"] == 0  # refused before any key was looked up


async def test_a_forged_signature_and_an_unknown_kid_are_refused(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    stranger = SigningKey("RS256")
    claims = oidc_issuer.claims("mallory")
    await refused(rt, stranger.sign(claims, kid=oidc_issuer.key.kid), "signature does not verify")
    await refused(rt, stranger.sign(claims), f"no key of issuer {oidc_issuer.url} has the token's kid '{stranger.kid}'")


async def test_a_100_kb_token_is_refused_before_it_is_parsed(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    huge = oidc_issuer.token("alice", padding="x" * 100_000)
    started = time.perf_counter()
    message = await refused(rt, huge, "tokens over 16384 bytes are refused")
    assert time.perf_counter() - started < 0.05
    assert "RIPPLE_AUTH_MAX_TOKEN_BYTES" in message and oidc_issuer.requests["/jwks"] == 0


# -- keys: caching, rotation, the refresh floor, an unreachable issuer ----------------------------


async def test_keys_are_cached_and_a_rotated_key_is_picked_up(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    for _ in range(5):
        await rt.authenticate(oidc_issuer.token("alice"))
    assert oidc_issuer.requests["/jwks"] == 1 and oidc_issuer.requests["/.well-known/openid-configuration"] == 1
    oidc_issuer.rotate()
    await asyncio.sleep(SETTINGS.keys_min_refresh_seconds + 0.1)
    identity = await rt.authenticate(oidc_issuer.token("bob"))  # an unknown kid: the keys are fetched again
    assert identity.subject == "bob" and oidc_issuer.requests["/jwks"] == 2


async def test_made_up_kids_do_not_refetch_the_keys_each_time(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    await rt.authenticate(oidc_issuer.token("alice"))
    claims = oidc_issuer.claims("mallory")
    bogus = [oidc_issuer.key.sign(claims, kid=f"bogus-{i}") for i in range(30)]
    for token in bogus[:10]:
        await refused(rt, token, "has the token's kid")
    assert oidc_issuer.requests["/jwks"] == 1  # within the floor: no fetch at all
    await asyncio.sleep(SETTINGS.keys_min_refresh_seconds + 0.1)
    results = await asyncio.gather(*(rt.authenticate(t) for t in bogus[10:]), return_exceptions=True)
    assert all(isinstance(r, AuthFailed) for r in results)
    assert oidc_issuer.requests["/jwks"] == 2  # twenty at once after the floor: one fetch between them


async def test_an_unreachable_issuer_is_a_clean_auth_failure(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    (provider,) = [p for p in rt.verifier.providers if p.issuer not in (oidc_issuer.url, oidc_issuer.custom_issuer)
                   and p.kind == "oidc"]
    token = oidc_issuer.key.sign({**oidc_issuer.claims("alice"), "iss": provider.issuer})
    started = time.perf_counter()
    message = await refused(rt, token, f"^could not fetch the keys of issuer {provider.issuer}: ")
    assert "ConnectError" in message and time.perf_counter() - started < 2
    await refused(rt, token, "could not fetch the keys")  # again, within the floor: from memory


async def test_a_provider_answering_without_end_is_refused_after_a_megabyte(oidc_issuer: OidcIssuer) -> None:
    # The keys' address answers a body that never ends (up to 256 MB): the fetch stops reading
    # past MAX_DOCUMENT_BYTES and says so, instead of taking the body into memory first.
    provider = Provider(index=0, kind="customJwt", issuer=oidc_issuer.url + "/endless", application_id=None,
                        algorithms=("ES256",), jwks_url=oidc_issuer.url + "/endless/jwks")
    source = KeySource(provider, SETTINGS)
    with pytest.raises(AuthFailed, match=f"answered more than {MAX_DOCUMENT_BYTES} bytes"):
        await source.key("any")
    await asyncio.sleep(0.2)  # the issuer's thread notices the closed connection
    assert 0 < oidc_issuer.endless_sent < 32 * MAX_DOCUMENT_BYTES, oidc_issuer.endless_sent


# -- custom JWT providers ---------------------------------------------------------------------------


async def test_custom_jwt_with_a_jwks_url_es256(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    token = oidc_issuer.custom_token("carol", name="Carol", picture="https://img.example/c.png",
                                     org={"id": "o1", "role": {"name": "owner"}})
    identity = await rt.authenticate(token)
    assert dict(identity) == {
        "tokenIdentifier": f"{oidc_issuer.custom_issuer}|carol", "subject": "carol", "issuer": oidc_issuer.custom_issuer,
        # Custom JWT claims keep their names, nested objects flattened, as Convex does.
        "name": "Carol", "picture": "https://img.example/c.png", "org.id": "o1", "org.role.name": "owner",
    }
    assert oidc_issuer.requests["/custom/jwks"] == 1
    await refused(rt, oidc_issuer.custom_token("carol", aud="convex"), "audience")
    rs256 = oidc_issuer.inline_key.sign({**oidc_issuer.claims("carol"), "iss": oidc_issuer.custom_issuer, "aud": "custom-app"})
    await refused(rt, rs256, "signed with 'RS256'; custom JWT provider .* accepts only ES256")


async def test_custom_jwt_with_inline_keys_rs256_and_a_data_uri_es256(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    inline = await rt.authenticate(oidc_issuer.signed(oidc_issuer.inline_key, "https://inline.example", "dave"))
    assert inline.token_identifier == "https://inline.example|dave"
    data_uri = await rt.authenticate(oidc_issuer.signed(oidc_issuer.data_uri_key, "https://datauri.example", "erin"))
    assert data_uri.subject == "erin"  # the provider's issuer has a trailing slash; the token's none
    await refused(rt, oidc_issuer.signed(oidc_issuer.data_uri_key, "https://inline.example"), "signed with 'ES256'")
    await refused(rt, oidc_issuer.signed(oidc_issuer.inline_key, "https://inline.example", ttl=-60), "expired")


# -- auth_config.py at load --------------------------------------------------------------------------


@pytest.mark.parametrize(("providers", "message"), [
    ({"domain": "https://a.example"}, r"providers\[0\]: `application_id` must be a non-empty string"),
    ([{"domain": "https://a.example", "application_id": "x"}, {"type": "customJwt", "issuer": "https://b.example",
      "jwks": "https://b.example/jwks", "algorithm": "HS256"}], r"providers\[1\]: `algorithm` must be one of RS256, ES256"),
    ([{"domain": "https://a.example", "applicationID": "x"}], r"providers\[0\]: unknown field\(s\) 'applicationID' \(Ripple spells it application_id\)"),
    ([{"type": "customJwt", "issuer": "https://b.example", "jwks": {"keys": []}, "algorithm": "RS256"}],
     r"providers\[0\]: `jwks` is not a usable JWKS"),
    ([{"type": "customJwt", "issuer": "https://b.example", "jwks": "data:application/json;base64,!!!", "algorithm": "RS256"}],
     r"providers\[0\]: `jwks` data: URI does not decode"),
    ([{"type": "customJwt", "issuer": "https://b.example", "jwks": "/jwks.json", "algorithm": "RS256"}],
     r"providers\[0\]: `jwks` must be the JWKS URL"),
    ([{"type": "oauth", "domain": "https://a.example"}], r"providers\[0\]: `type` must be 'customJwt'"),
    ([{"domain": "https://", "application_id": "x"}], r"providers\[0\]: `domain` must be the issuer's URL"),
    ("not a list", "`providers` must be a list"),
])
def test_bad_providers_are_load_errors_naming_the_provider_and_field(providers: Any, message: str) -> None:
    module = types.SimpleNamespace(providers=[providers] if isinstance(providers, dict) else providers)
    with pytest.raises(AppLoadError, match="functions/auth_config.py: " + message):
        load_providers(module)  # type: ignore[arg-type]


async def test_a_bad_auth_config_in_a_partial_load_refuses_tokens_and_serves_the_rest(
        namespace: str, oidc_issuer: OidcIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in oidc_issuer.app_env(unreachable_url()).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RIPPLE_TEST_INLINE_JWKS", '{"keys": "none"}')
    with pytest.raises(AppLoadError, match=r"providers\[2\]: `jwks` is not a usable JWKS"):
        async with open_runtime(AUTH_APP, namespace):  # a complete load (ripple serve) refuses it
            pass
    db = Database(database_url(), namespace)
    await db.connect(min_size=1, max_size=2)
    try:
        runtime = Runtime(Config(app_dir=AUTH_APP, database_url=database_url(), db_schema=namespace, dev=True), db)
        await runtime.load(partial=True)  # ripple dev serves what loads
        assert "providers[2]" in runtime.app.load_errors["functions/auth_config.py"]
        assert (await runtime.call("query", "me:whoami", {}, None)).value is None
        await refused(runtime, oidc_issuer.token("alice"), r"functions/auth_config.py failed to load.*providers\[2\]")
    finally:
        await db.close()


# -- sharing of live queries is per identity -------------------------------------------------------


class Quiet:
    def notify(self) -> None:
        pass


async def test_live_queries_are_shared_per_identity_only(rt: Runtime, oidc_issuer: OidcIssuer) -> None:
    manager = SubscriptionManager(rt)
    alice = await rt.authenticate(oidc_issuer.token("alice", ttl=60))
    alice_again = await rt.authenticate(oidc_issuer.token("alice", ttl=900))  # a refreshed token
    bob = await rt.authenticate(oidc_issuer.token("bob"))
    impostor = Identity(alice, role="admin")  # same tokenIdentifier, other claims
    subscriber = Quiet()
    shared = [manager.subscribe("me:my_notes", {}, who, None, subscriber) for who in (alice, alice_again, bob, impostor, None)]
    assert shared[0] is shared[1]
    assert len({id(sq) for sq in shared}) == 4
    assert [sq.identity for sq in shared[2:]] == [bob, impostor, None]
