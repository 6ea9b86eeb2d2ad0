"""Verifying webhook signatures in HTTP actions: the Standard Webhooks scheme (Svix's, which
Clerk sends) and plain HMAC-SHA256 (GitHub's `X-Hub-Signature-256`, and many others).

Standard Webhooks signs `<id>.<timestamp>.<body>` with HMAC-SHA256 under the secret (given as
`whsec_<base64>`), and sends `webhook-id`, `webhook-timestamp` and `webhook-signature` (Svix:
`svix-id`, `svix-timestamp`, `svix-signature`), the last a space-separated list of `v1,<base64>`
(several while a secret is being rotated). The `standardwebhooks` package decodes the secret and
computes the signature; the headers are read here, so that a malformed one is a verification
failure (the package raises ValueError on some), and the timestamp tolerance is a parameter (the
package fixes it at five minutes).

A failure raises WebhookVerificationError; an HTTP action that lets it escape is answered 401
with its message (server/api/http_actions.py). Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from server.errors import RippleError

DEFAULT_TOLERANCE = 300.0  # seconds a Standard Webhooks timestamp may be off (either way)
SCHEMES = (("webhook-id", "webhook-timestamp", "webhook-signature"), ("svix-id", "svix-timestamp", "svix-signature"))


class WebhookVerificationError(RippleError):
    """A webhook's signature did not verify: answered 401 with this message."""


class _Request(Protocol):
    """What the helpers read of a request (a Starlette Request is one)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def body(self) -> bytes: ...


def _secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        if not secret:
            raise ValueError("the webhook secret is empty; set it (e.g. with `ripple env set`)")
        return secret
    if not isinstance(secret, str) or not secret:
        raise ValueError("the webhook secret is empty or not a string; set it (e.g. with `ripple env set`)")
    return secret.encode()


def verify_standard_webhook(body: bytes, headers: Mapping[str, str], secret: str | bytes, *,
                            tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> str:
    """Check a Standard Webhooks / Svix signature of `body`; return the webhook's id (record it
    to refuse replays within the tolerance: docs/http-actions.md). `secret`: `whsec_...`, as the
    sender shows it."""
    from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

    lower = {k.lower(): v for k, v in headers.items()}
    found = next(((lower.get(i), lower.get(t), lower.get(s)) for i, t, s in SCHEMES if lower.get(i)), None)
    if found is None or not all(found):
        raise WebhookVerificationError("the webhook-id, webhook-timestamp and webhook-signature headers (or svix-*) are missing")
    msg_id, stamp, signatures = (str(v) for v in found)
    if not stamp.isdigit():
        raise WebhookVerificationError("the webhook timestamp is not a number of seconds")
    age = (time.time() if now is None else now) - int(stamp)
    if abs(age) > tolerance:
        when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
        raise WebhookVerificationError(f"the webhook timestamp is {when}, beyond the {tolerance:g} s tolerance")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise WebhookVerificationError("the webhook body is not UTF-8 text") from None
    _secret_bytes(secret)  # refuses an empty one, with a message saying so
    try:
        webhook = Webhook(secret)
    except (EmptyWebhookSecretError, binascii.Error, ValueError) as exc:
        raise ValueError("the webhook secret is not a Standard Webhooks secret (whsec_<base64>)") from exc
    signed_at = datetime.fromtimestamp(int(stamp), tz=UTC)
    expected = base64.b64decode(webhook.sign(msg_id=msg_id, timestamp=signed_at, data=text).split(",", 1)[1])
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # other schemes (v1a: asymmetric) are not checked here
        try:
            given = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(expected, given):
            return msg_id
    raise WebhookVerificationError("no webhook signature matches (a wrong secret, or a changed body)")


def verify_hmac_signature(body: bytes, signature: str | None, secret: str | bytes) -> None:
    """Check an HMAC-SHA256 of `body` under `secret`, given in hex or base64, with or without
    a `sha256=` prefix (as GitHub sends it)."""
    if not signature:
        raise WebhookVerificationError("the signature header is missing")
    expected = hmac.new(_secret_bytes(secret), body, hashlib.sha256).digest()
    given_text = signature.strip()
    if given_text.lower().startswith("sha256="):
        given_text = given_text[len("sha256="):]
    given = _digest_bytes(given_text)
    if given is None or not hmac.compare_digest(expected, given):
        raise WebhookVerificationError("the HMAC-SHA256 signature does not match (a wrong secret, or a changed body)")


def _digest_bytes(text: str) -> bytes | None:
    """A 32-byte digest written in hex or (standard or URL-safe) base64; None if it is neither."""
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error:
        return None
    return raw if len(raw) == 32 else None


async def verify_webhook(request: _Request, secret: str | bytes, *, tolerance: float = DEFAULT_TOLERANCE) -> bytes:
    """The body of a Standard Webhooks / Svix request, once its signature verified (else
    WebhookVerificationError). Read the webhook's id from the `webhook-id` / `svix-id` header."""
    body = await request.body()
    verify_standard_webhook(body, request.headers, secret, tolerance=tolerance)
    return body


async def verify_hmac(request: _Request, secret: str | bytes, *, header: str = "X-Hub-Signature-256") -> bytes:
    """The body of a request signed with HMAC-SHA256 in `header`, once it verified (else
    WebhookVerificationError)."""
    body = await request.body()
    verify_hmac_signature(body, request.headers.get(header), secret)
    return body

