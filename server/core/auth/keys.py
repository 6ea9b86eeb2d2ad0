"""The public keys of auth providers, fetched and cached.

An OIDC provider's keys come from its discovery document (`{issuer}/.well-known/
openid-configuration` names the `jwks_uri`); a custom JWT provider's from its JWKS URL, or
from the JWKS written in auth_config.py. Fetched keys are kept for
`keys_max_age_seconds`; a token whose `kid` is not among them makes one refetch (a rotated key
is picked up at once), but never more often than every `keys_min_refresh_seconds`, so a flood of
tokens with made-up kids cannot make Ripple hammer the issuer; a failed fetch is remembered as
long. Concurrent look-ups share one fetch. Keys outlive reloads of the app (`KeyStore`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import jwt

from server.config import AuthConfig
from server.core.auth.providers import Provider
from server.errors import AuthFailed

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("ripple.auth")

MAX_DOCUMENT_BYTES = 1024 * 1024  # a discovery document or JWKS larger than this is refused


class KeySource:
    """The keys of one provider."""

    def __init__(self, provider: Provider, settings: AuthConfig) -> None:
        self.issuer = provider.issuer
        self.remote = provider.inline_jwks is None
        self.jwks_url = provider.jwks_url
        self.settings = settings
        self.keys: jwt.PyJWKSet | None = None
        self.fetched_at = 0.0  # monotonic time of the keys held
        self.attempted_at = float("-inf")  # of the latest fetch, successful or not
        self.error: str | None = None  # why the latest fetch failed
        self.fetches = 0
        self._lock = asyncio.Lock()
        if provider.inline_jwks is not None:
            self.keys = jwt.PyJWKSet.from_json(provider.inline_jwks)
            self.fetched_at = float("inf")

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key a token's `kid` names (a token without one: the provider's only key)."""
        if self.keys is None or time.monotonic() - self.fetched_at > self.settings.keys_max_age_seconds:
            await self._refresh()
        found = self._find(kid)
        if found is None and self.remote:
            await self._refresh()
            found = self._find(kid)
        if found is None:
            if self.keys is None:
                raise AuthFailed(self.error or f"could not fetch the keys of issuer {self.issuer}")
            if kid is None:
                raise AuthFailed(f"the token has no `kid` header and issuer {self.issuer} has "
                                 f"{len(self.keys.keys)} keys: which one signed it is unknown")
            raise AuthFailed(f"no key of issuer {self.issuer} has the token's kid {kid[:100]!r}")
        return found

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if self.keys is None:
            return None
        if kid is None:
            return self.keys.keys[0] if len(self.keys.keys) == 1 else None
        return next((k for k in self.keys.keys if k.key_id == kid), None)

    async def _refresh(self) -> None:
        """Fetch the keys, unless a fetch started within `keys_min_refresh_seconds` (then the
        keys it got, or its error, stand). Callers waiting here share the fetch under way."""
        started_waiting = time.monotonic()
        async with self._lock:
            if self.attempted_at >= started_waiting:
                return  # fetched while this caller waited
            if time.monotonic() - self.attempted_at < self.settings.keys_min_refresh_seconds:
                return
            self.attempted_at = time.monotonic()
            self.fetches += 1
            try:
                keys = await self._fetch()
            except AuthFailed as exc:
                self.error = str(exc)
                log.warning("%s", exc)
                return
            self.keys, self.fetched_at, self.error = keys, time.monotonic(), None

    async def _fetch(self) -> jwt.PyJWKSet:
        # Imported here, not at the top: httpx and what it loads (ssl, certifi) take a fifth of a
        # second, a third of a server's start, and only apps whose providers fetch keys need it.
        import httpx

        timeout = httpx.Timeout(self.settings.fetch_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            url = self.jwks_url
            if url is None:
                document = await self._get_json(client, f"{self.issuer}/.well-known/openid-configuration")
                url = document.get("jwks_uri") if isinstance(document, dict) else None
                if not isinstance(url, str):
                    raise self._failed("its discovery document has no `jwks_uri`")
            body = await self._get_json(client, url)
        try:
            return jwt.PyJWKSet.from_dict(body)
        except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError, TypeError, AttributeError) as exc:
            raise self._failed(f"{url} holds no usable JWKS: {exc}") from None

    async def _get_json(self, client: httpx.AsyncClient, url: str) -> Any:
        import httpx  # loaded by _fetch already: a lookup in sys.modules

        # Streamed, and read no further than MAX_DOCUMENT_BYTES: a provider (or whatever answers
        # at its address) sending an endless or huge body costs that much memory, not all of it.
        body = bytearray()
        try:
            async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise self._failed(f"GET {url} answered HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise self._failed(f"GET {url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise self._failed(f"GET {url}: {type(exc).__name__} {exc}".rstrip()) from None
        try:
            return json.loads(body)
        except ValueError:
            raise self._failed(f"GET {url} did not answer JSON") from None

    def _failed(self, why: str) -> AuthFailed:
        return AuthFailed(f"could not fetch the keys of issuer {self.issuer}: {why}")


class KeyStore:
    """Every provider's KeySource, kept across reloads of the app while the provider's issuer
    and key source stay the same."""

    def __init__(self, settings: AuthConfig) -> None:
        self.settings = settings
        self._sources: dict[tuple[str, str | None, str | None], KeySource] = {}

    def source(self, provider: Provider) -> KeySource:
        key = (provider.issuer, provider.jwks_url, provider.inline_jwks)
        found = self._sources.get(key)
        if found is None:
            found = self._sources[key] = KeySource(provider, self.settings)
        return found

    def keep_only(self, providers: tuple[Provider, ...]) -> None:
        """Forget the sources of providers the app no longer lists."""
        wanted = {(p.issuer, p.jwks_url, p.inline_jwks) for p in providers}
        self._sources = {k: v for k, v in self._sources.items() if k in wanted}
