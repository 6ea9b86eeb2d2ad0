"""Verifying a token: which provider issued it, whether it is genuine and current, and the
Identity it proves.

The provider is chosen by the token's (unverified) `iss` among those auth_config.py lists, and
by its `aud` when several share the issuer; the signature is then checked with PyJWT against that
provider's keys (keys.py), with an allow-list of algorithms (RS256 and ES256 for OIDC, the one
configured for a custom JWT: `alg: none`, and HS256 signed with a public key, are refused
before any key is looked up). `exp` is required; `exp`, `nbf` and `iat` are honoured with
`clock_skew_seconds` of leeway. A token longer than `max_token_bytes` is refused before it is
parsed. Every refusal is an AuthFailed whose message says what was wrong and is safe to show
the client.
"""

from __future__ import annotations

import datetime
from typing import Any

import jwt

from server.config import AuthConfig
from server.core.auth.claims import identity_of
from server.core.auth.keys import KeyStore
from server.core.auth.providers import FILE, Provider, load_providers
from server.core.contexts import Identity
from server.core.loader import App
from server.errors import AppLoadError, AuthFailed, shown


class Verifier:
    """The token check of one loaded version of the app. `load_error`: why auth_config.py did
    not load (dev mode serves the rest of the app); every token is then refused with it."""

    def __init__(self, providers: tuple[Provider, ...], keys: KeyStore, settings: AuthConfig,
                 load_error: str | None = None) -> None:
        self.providers = providers
        self.keys = keys
        self.settings = settings
        self.load_error = load_error

    async def verify(self, token: str) -> Identity:
        limit = self.settings.max_token_bytes
        if len(token) > limit:
            raise AuthFailed(f"the token is {len(token)} bytes long; tokens over {limit} bytes are refused "
                             "(RIPPLE_AUTH_MAX_TOKEN_BYTES)")
        if self.load_error is not None:
            raise AuthFailed(f"{FILE} failed to load, so no token can be verified: {self.load_error}")
        if not self.providers:
            raise AuthFailed(f"a token was sent but no auth providers are configured ({FILE})")
        header, claims = _unverified(token)
        provider = self._provider_of(claims)
        alg = header.get("alg")
        if alg not in provider.algorithms:
            raise AuthFailed(f"the token is signed with {shown(str(alg))!r}; {provider} accepts "
                             f"only {', '.join(provider.algorithms)}")
        kid = header.get("kid")
        key = await self.keys.source(provider).key(kid if isinstance(kid, str) else None)
        skew = self.settings.clock_skew_seconds
        try:
            verified: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=list(provider.algorithms), audience=provider.application_id, leeway=skew,
                options={"require": ["exp", "iss", "sub"], "verify_aud": provider.application_id is not None},
            )
        except jwt.PyJWTError as exc:
            raise AuthFailed(_why(exc, claims, provider)) from None
        return identity_of(verified, oidc=provider.kind == "oidc", expires_at=float(verified["exp"]) + skew)

    def _provider_of(self, claims: dict[str, Any]) -> Provider:
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise AuthFailed("the token has no `iss` (issuer) claim naming one of the auth providers")
        candidates = [p for p in self.providers if p.matches_issuer(iss)]
        if not candidates:
            known = ", ".join(p.issuer for p in self.providers)
            raise AuthFailed(f"no auth provider has the token's issuer {shown(iss)!r} (configured: {known})")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
        for provider in candidates:
            if provider.application_id is None or provider.application_id in audiences:
                return provider
        wanted = " or ".join(repr(p.application_id) for p in candidates)
        raise AuthFailed(f"the token's audience {shown(repr(audiences))} does not include the application_id {wanted} "
                         f"of the providers of issuer {candidates[0].issuer}")


def app_verifier(app: App, keys: KeyStore, settings: AuthConfig, *, partial: bool) -> Verifier:
    """The Verifier of a freshly loaded app. Providers that are not valid raise AppLoadError;
    in a `partial` load (dev mode) the error is kept with the app's other load errors instead,
    and tokens are refused with it until a change fixes the file."""
    error = app.load_errors.get(FILE)
    if error is None:
        try:
            providers = load_providers(app.modules.get("auth_config"))
        except AppLoadError as exc:
            if not partial:
                raise
            error = app.load_errors[FILE] = str(exc)
    if error is not None:
        return Verifier((), keys, settings, load_error=error)
    keys.keep_only(providers)
    return Verifier(providers, keys, settings)


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The token's header and claims, before anything is verified (to pick provider and key)."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthFailed(f"the token is not a valid JWT: {exc}") from None
    if not isinstance(claims, dict):
        raise AuthFailed("the token's payload is not a JSON object")
    return header, claims


def _when(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat(timespec="seconds")
    return "?"


def _why(exc: jwt.PyJWTError, claims: dict[str, Any], provider: Provider) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return f"the token expired at {_when(claims, 'exp')}"
    if isinstance(exc, jwt.ImmatureSignatureError):
        claim = "nbf" if "nbf" in str(exc) or "iat" not in str(exc) else "iat"
        return f"the token is not valid yet ({claim} {_when(claims, claim)})"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token has no `{exc.claim}` claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"the token's audience does not include the application_id {provider.application_id!r} of {provider}"
    if isinstance(exc, jwt.InvalidSignatureError):
        return f"the token's signature does not verify with the key of {provider} it names"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return f"the token's algorithm is not one {provider} accepts ({', '.join(provider.algorithms)})"
    return f"the token is not valid: {exc}"
