"""Upload URL tokens: `<expiry>.<nonce>.<mac>`, an HMAC-SHA256 (keyed with the deployment's
storage secret, which never leaves the database and the server) over the expiry and a random
nonce. Verifying needs no database; using a token records its nonce there, which makes it
single-use (storage/files.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from server.errors import RippleUsageError

TOKEN_SECONDS = 3600  # how long an upload URL stays valid, as Convex's


class BadToken(RippleUsageError):
    """An upload URL whose token is missing, malformed, forged, expired or used before."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Token:
    nonce: str
    expires: int  # epoch seconds


def _mac(secret: bytes, body: str) -> str:
    digest = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def sign(secret: bytes, now: float, seconds: int = TOKEN_SECONDS) -> str:
    """A fresh token valid for `seconds` from `now`."""
    body = f"{int(now) + seconds}.{secrets.token_hex(16)}"
    return f"{body}.{_mac(secret, body)}"


def verify(secret: bytes, token: str | None, now: float) -> Token:
    """The token's nonce and expiry, once its signature and expiry hold; BadToken otherwise."""
    if not token:
        raise BadToken("MissingUploadToken", "the upload URL has no token: ask a mutation or action for one "
                       "with ctx.storage.generate_upload_url()")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or len(token) > 200:
        raise BadToken("InvalidUploadToken", "the upload URL's token is malformed; use the URL exactly as "
                       "ctx.storage.generate_upload_url() returned it")
    expires, nonce, mac = parts
    if not hmac.compare_digest(_mac(secret, f"{expires}.{nonce}"), mac):
        raise BadToken("InvalidUploadToken", "the upload URL's token is not valid for this deployment")
    if int(expires) < now:
        raise BadToken("UploadUrlExpired", f"the upload URL expired (upload URLs are valid for {TOKEN_SECONDS // 60} "
                       "minutes); ask for a new one")
    return Token(nonce, int(expires))
