"""The development issuer: an OpenID issuer of `ripple dev` (never `ripple serve`), so an app's
sign-in works offline with the same code paths as Clerk's (docs/auth.md, Development issuer).

It signs ES256 tokens with one key, generated at the first `ripple dev` of an app directory into
`.ripple/dev_auth_key.pem` (readable by its owner only) and reused afterwards, so tokens minted
before a restart still verify after it. The server verifies them as it verifies any OIDC
provider's (server/core/auth/keys.py): discovery document, then JWKS, both over HTTP from
server/api/dev_auth.py. Nothing here is a secret worth protecting beyond the developer's machine:
anyone who can reach a dev server can mint a token for anyone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.errors import RippleUsageError

KEY_FILE = Path(".ripple") / "dev_auth_key.pem"
PATH = "/_ripple/dev-auth"  # where server/api/dev_auth.py serves it, under the server's base URL
ENV_VAR = "RIPPLE_DEV_AUTH_ISSUER"  # `ripple dev` sets it to the issuer URL before the app loads
AUDIENCE = "convex"  # the application_id an app's auth_config.py lists with the issuer
ALGORITHM = "ES256"
MAX_STRING = 256  # characters of a subject, name, email or role
DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 86_400
_FIELDS = ("subject", "name", "email", "role", "ttlSeconds")


class TokenRequestError(RippleUsageError):
    """A token request the issuer refuses; the message names the field."""


def issuer_url(base_url: str) -> str:
    """The issuer of a server reached at `base_url` (what tokens carry as `iss`)."""
    return base_url.rstrip("/") + PATH


def with_default_issuer(attributes: dict[str, Any], dev: bool, base_url: str) -> dict[str, Any]:
    """The identity an admin acts as, with the development issuer's `issuer` when in dev mode it
    names a subject and neither an issuer nor a tokenIdentifier: the same user as that issuer's
    token for the subject (`ripple run --identity '{"subject": "u1"}'`, over HTTP or websocket)."""
    if dev and "issuer" not in attributes and "tokenIdentifier" not in attributes:
        return {**attributes, "issuer": issuer_url(base_url)}
    return attributes


def load_or_create_key(app_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The app directory's signing key, made (P-256, 0600) the first time."""
    path = app_dir / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RippleUsageError(f"{path} does not hold an EC private key; delete it and `ripple dev` makes a new one")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    partial.replace(path)  # two dev servers starting at once: one key wins, both read it next time
    return load_or_create_key(app_dir)


@dataclass(frozen=True)
class TokenRequest:
    """A checked body of `POST /_ripple/dev-auth/token`."""

    subject: str
    name: str | None = None
    email: str | None = None
    role: str | None = None
    ttl_seconds: int = DEFAULT_TTL_SECONDS

    @classmethod
    def parse(cls, body: Any) -> TokenRequest:
        if not isinstance(body, dict):
            raise TokenRequestError('the body must be a JSON object such as {"subject": "casey", "role": "creator"}')
        unknown = sorted(set(map(str, body)) - set(_FIELDS))
        if unknown:
            raise TokenRequestError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(_FIELDS)}")
        if "subject" not in body:
            raise TokenRequestError("`subject` is required: the user's id, a non-empty string")
        strings: dict[str, str | None] = {}
        for field in ("subject", "name", "email", "role"):
            value = body.get(field)
            if value is None and field != "subject":
                strings[field] = None
                continue
            if not isinstance(value, str):
                raise TokenRequestError(f"`{field}` must be a string, not {type(value).__name__}")
            if not value or len(value) > MAX_STRING:
                raise TokenRequestError(f"`{field}` must be 1 to {MAX_STRING} characters long, not {len(value)}")
            strings[field] = value
        ttl = body.get("ttlSeconds", DEFAULT_TTL_SECONDS)
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECONDS:
            raise TokenRequestError(f"`ttlSeconds` must be a whole number from 1 to {MAX_TTL_SECONDS}, not {json.dumps(ttl)}")
        subject = strings["subject"]
        assert subject is not None
        return cls(subject, strings["name"], strings["email"], strings["role"], ttl)


class DevIssuer:
    """Signs tokens and publishes its key for the server reached at `base_url`."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, base_url: str) -> None:
        self.key = key
        self.issuer = issuer_url(base_url)
        public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = hashlib.sha256(public).hexdigest()[:16]  # the same key, the same kid, across restarts

    def discovery(self) -> dict[str, Any]:
        """The OpenID discovery document, with what an OIDC verifier reads of it."""
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "token_endpoint": f"{self.issuer}/token",
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "name", "email", "role"],
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def mint(self, request: TokenRequest, now: float | None = None) -> tuple[str, int]:
        """(token, expiry in ms since the epoch)."""
        issued = int(time.time() if now is None else now)
        expires = issued + request.ttl_seconds
        claims: dict[str, Any] = {"iss": self.issuer, "sub": request.subject, "aud": AUDIENCE, "iat": issued, "exp": expires}
        for claim in ("name", "email", "role"):
            value = getattr(request, claim)
            if value is not None:
                claims[claim] = value
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})
        return token, expires * 1000
