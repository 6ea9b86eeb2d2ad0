"""The auth providers of an app, from `functions/auth_config.py`:

    providers = [
        {"domain": "https://clerk.example.com", "application_id": "convex"},          # OIDC
        {"type": "customJwt", "issuer": "https://auth.example.com",
         "jwks": "https://auth.example.com/.well-known/jwks.json", "algorithm": "RS256",
         "application_id": "my-app"},                                                # custom JWT
    ]

as Convex's auth.config.ts has them (snake_case). Checked when the app loads: a mistake raises
AppLoadError naming the provider and the field. Issuers are compared as Convex compares them:
an `https://` prefix added when there is no scheme, trailing slashes ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import jwt

from server.errors import AppLoadError

FILE = "functions/auth_config.py"
OIDC_ALGORITHMS = ("RS256", "ES256")
CUSTOM_ALGORITHMS = ("RS256", "ES256")
_OIDC_FIELDS = {"domain", "application_id", "type"}
_CUSTOM_FIELDS = {"type", "issuer", "jwks", "algorithm", "application_id"}


def normalize_issuer(issuer: str) -> str:
    """An issuer as compared: with a scheme (`https://` added when it has none), without
    trailing slashes. Auth0 documents its domain without the slash its tokens carry."""
    if not issuer.startswith(("https://", "http://")):
        issuer = "https://" + issuer
    return issuer.rstrip("/")


@dataclass(frozen=True)
class Provider:
    """One entry of `providers`. `jwks_url` None and `inline_jwks` None: OIDC (discovery)."""

    index: int
    kind: str  # "oidc" | "customJwt"
    issuer: str  # normalized (normalize_issuer)
    application_id: str | None  # the audience tokens must carry; None: any (custom JWT only)
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    inline_jwks: str | None = None  # the JWKS as JSON text (from a dict or a data: URI)

    def __str__(self) -> str:
        kind = "OIDC" if self.kind == "oidc" else "custom JWT"
        return f"{kind} provider {self.issuer}"

    def matches_issuer(self, iss: str) -> bool:
        return normalize_issuer(iss) == self.issuer


def load_providers(module: ModuleType | None) -> tuple[Provider, ...]:
    """The providers `functions/auth_config.py` declares (none without the file)."""
    if module is None:
        return ()
    raw = getattr(module, "providers", None)
    if raw is None:
        raise AppLoadError(f"{FILE} must define `providers = [...]` (a list of provider dicts; see docs/auth.md)")
    if not isinstance(raw, (list, tuple)):
        raise AppLoadError(f"{FILE}: `providers` must be a list of dicts, not {type(raw).__name__}")
    return tuple(parse_provider(i, entry) for i, entry in enumerate(raw))


def parse_provider(index: int, entry: Any) -> Provider:
    where = f"{FILE}: providers[{index}]"
    if not isinstance(entry, dict):
        raise AppLoadError(f"{where} must be a dict, not {type(entry).__name__}")
    kind = entry.get("type", "oidc")
    if kind not in ("oidc", "customJwt"):
        raise AppLoadError(f"{where}: `type` must be 'customJwt' (or absent for OIDC), not {kind!r}")
    allowed = _OIDC_FIELDS if kind == "oidc" else _CUSTOM_FIELDS
    unknown = sorted(set(entry) - allowed)
    if unknown:
        hint = " (Ripple spells it application_id)" if "applicationID" in unknown else ""
        raise AppLoadError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}{hint}; "
                           f"a{'n OIDC' if kind == 'oidc' else ' customJwt'} provider takes {', '.join(sorted(allowed))}")
    if kind == "oidc":
        domain = _url(entry, "domain", where)
        app_id = _string(entry, "application_id", where, required=True)
        return Provider(index, "oidc", normalize_issuer(domain), app_id, OIDC_ALGORITHMS)
    issuer = _url(entry, "issuer", where)
    algorithm = entry.get("algorithm")
    if algorithm not in CUSTOM_ALGORITHMS:
        raise AppLoadError(f"{where}: `algorithm` must be one of {', '.join(CUSTOM_ALGORITHMS)}, not {algorithm!r}")
    app_id = _string(entry, "application_id", where, required=False)
    jwks_url, inline = _jwks(entry.get("jwks"), where)
    return Provider(index, "customJwt", normalize_issuer(issuer), app_id, (algorithm,), jwks_url, inline)


def _string(entry: dict[str, Any], name: str, where: str, *, required: bool) -> str | None:
    value = entry.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise AppLoadError(f"{where}: `{name}` must be a non-empty string, not {value!r}")
    return value


def _url(entry: dict[str, Any], name: str, where: str) -> str:
    value = _string(entry, name, where, required=True)
    assert value is not None
    parsed = urllib.parse.urlsplit(normalize_issuer(value))
    if not parsed.hostname or parsed.query or parsed.fragment:
        raise AppLoadError(f"{where}: `{name}` must be the issuer's URL (https://auth.example.com), not {value!r}")
    return value


def _jwks(value: Any, where: str) -> tuple[str | None, str | None]:
    """(URL, None) or (None, JWKS JSON): a URL, a dict, or a `data:` URI holding the JSON."""
    if isinstance(value, dict):
        text = json.dumps(value)
    elif isinstance(value, str) and value.startswith("data:"):
        text = _data_uri(value, where)
    elif isinstance(value, str) and value.startswith(("https://", "http://")):
        return value, None
    else:
        raise AppLoadError(f"{where}: `jwks` must be the JWKS URL, the JWKS as a dict, or a data: URI holding it, "
                           f"not {str(value)[:80]!r}")
    check_jwks(text, f"{where}: `jwks`")
    return None, text


def _data_uri(uri: str, where: str) -> str:
    header, comma, payload = uri[len("data:"):].partition(",")
    if not comma:
        raise AppLoadError(f"{where}: `jwks` data: URI has no ',' before its data")
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True).decode()
        return urllib.parse.unquote(payload)
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AppLoadError(f"{where}: `jwks` data: URI does not decode: {exc}") from None


def check_jwks(text: str, what: str) -> jwt.PyJWKSet:
    """Parse a JWKS; AppLoadError naming `what` when it holds no usable key."""
    try:
        return jwt.PyJWKSet.from_json(text)
    except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError) as exc:
        raise AppLoadError(f"{what} is not a usable JWKS: {exc}") from None
