"""A real OIDC issuer on a loopback port, for auth tests (the `oidc_issuer` fixture in
tests/conftest.py): it serves a discovery document and a JWKS for keys generated here with
`cryptography`, mints tokens (`token()`, and `GET /token?sub=...` for Node scripts), counts the
requests it gets, and can rotate its key. Under `/custom` it is also a custom-JWT issuer
(ES256, JWKS at `/custom/jwks`).

    issuer.url                      http://127.0.0.1:<port>
    issuer.token(sub="alice")       an RS256 ID token for audience "convex", valid one hour
    issuer.rotate()                 a new signing key; the JWKS serves only the new one
    issuer.requests["/jwks"]        how often the JWKS was fetched
    issuer.endless_sent             bytes of the never-ending /endless/jwks sent before the reader left
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "convex"
CUSTOM_AUDIENCE = "custom-app"


class SigningKey:
    """A private key with its kid, and its public half as a JWK."""

    def __init__(self, alg: str) -> None:
        self.alg = alg
        self.kid = uuid.uuid4().hex[:12]
        self.private: Any = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256"
                             else ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if self.alg == "RS256" else jwt.algorithms.ECAlgorithm
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None, kid: str | None = "") -> str:
        header = {"kid": self.kid if kid == "" else kid, **(headers or {})}
        if header["kid"] is None:
            del header["kid"]
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=header)


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.jwk() for k in keys]}


ENDLESS_BYTES = 256 * 1024 * 1024  # what /endless/jwks sends at most
POLL_SECONDS = 0.02  # how often the serving thread looks for a shutdown


class OidcIssuer:
    def __init__(self) -> None:
        self.key = SigningKey("RS256")
        self.custom_key = SigningKey("ES256")
        self.inline_key = SigningKey("RS256")  # for a customJwt provider with the JWKS inline (a dict)
        self.data_uri_key = SigningKey("ES256")  # ... and with the JWKS in a data: URI
        self.requests: Counter[str] = Counter()
        self.endless_sent = 0  # bytes of /endless/jwks written before the client went away
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.custom_issuer = self.url + "/custom"
        # shutdown() waits for serve_forever's next poll: at the default half second, closing the
        # issuer would be most of what a test of tests/test_auth.py takes.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(POLL_SECONDS,), daemon=True,
                                        name="oidc-issuer")
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def rotate(self) -> None:
        self.key = SigningKey("RS256")

    def claims(self, sub: str = "alice", *, ttl: float = 3600, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.url, "sub": sub, "aud": AUDIENCE, "iat": now, "exp": int(now + ttl), **extra}

    def token(self, sub: str = "alice", *, ttl: float = 3600, **extra: Any) -> str:
        """An ID token signed with the current key; `extra` claims override the defaults."""
        return self.key.sign(self.claims(sub, ttl=ttl, **extra))

    def custom_token(self, sub: str = "carol", *, ttl: float = 3600, **extra: Any) -> str:
        claims = {**self.claims(sub, ttl=ttl), "iss": self.custom_issuer, "aud": CUSTOM_AUDIENCE, **extra}
        return self.custom_key.sign(claims)

    def signed(self, key: SigningKey, iss: str, sub: str = "dave", *, ttl: float = 3600, **extra: Any) -> str:
        return key.sign({**self.claims(sub, ttl=ttl), "iss": iss, **extra})

    def app_env(self, unreachable: str) -> dict[str, str]:
        """What tests/apps/auth/functions/auth_config.py reads: this issuer, the inline keys, and
        the URL of an issuer that cannot be reached."""
        return {"RIPPLE_TEST_ISSUER": self.url, "RIPPLE_TEST_INLINE_JWKS": json.dumps(jwks(self.inline_key)),
                "RIPPLE_TEST_DATA_URI_JWKS": json.dumps(jwks(self.data_uri_key)), "RIPPLE_TEST_UNREACHABLE": unreachable}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                issuer.requests[url.path] += 1
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    self._json({"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks",
                                "id_token_signing_alg_values_supported": ["RS256"]})
                elif url.path == "/jwks":
                    self._json(jwks(issuer.key))
                elif url.path == "/custom/jwks":
                    self._json(jwks(issuer.custom_key))
                elif url.path == "/token":  # for Node scripts: ?sub=alice&ttl=10&name=Alice&bad=1
                    sub, ttl, bad = query.pop("sub", "alice"), float(query.pop("ttl", "3600")), query.pop("bad", None)
                    times = {k: int(query.pop(k)) for k in ("iat", "nbf") if k in query}
                    token = issuer.token(sub, ttl=ttl, **query, **times)
                    if bad:  # a forged signature
                        head, body, _ = token.split(".")
                        token = f"{head}.{body}.{base64.urlsafe_b64encode(b'forged' * 40).decode().rstrip('=')}"
                    self._text(token)
                elif url.path == "/endless/jwks":  # a body that does not end: how much gets read?
                    self._endless()
                else:
                    self.send_error(404)

            def _endless(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()  # no Content-Length: the body ends when the connection does
                chunk = b" " * 65536
                try:
                    while issuer.endless_sent < ENDLESS_BYTES:
                        self.wfile.write(chunk)
                        issuer.endless_sent += len(chunk)
                except OSError:
                    pass  # the client stopped reading and went away

            def _json(self, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _text(self, text: str) -> None:
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
