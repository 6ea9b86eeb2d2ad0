"""A verified token's claims as the Identity functions see, named as Convex names them.

OIDC tokens: the standard claims under Convex's UserIdentity names (`picture` -> pictureUrl,
`birthdate` -> birthday, `zoneinfo` -> timezone, `locale` -> language, `address.formatted` ->
address, `updated_at` -> updatedAt as an RFC 3339 string, ...), every other claim under its own
name. Custom JWTs: every claim under its own name, nested objects flattened to `a.b` keys, as
Convex's backend does it. Both drop the claims that change with every refresh of a token (`exp`,
`iat`, `nbf`, `jti`, Clerk's `fva`, ...): two tokens of one user give equal identities, so their
live queries are shared and a refreshed token re-runs nothing.
"""

from __future__ import annotations

import datetime
from typing import Any

from server.core.contexts import Identity
from server.errors import AuthFailed

# OIDC claim -> Convex UserIdentity field, with the type it must have to be mapped.
STANDARD_CLAIMS: dict[str, tuple[str, type]] = {
    "name": ("name", str),
    "given_name": ("givenName", str),
    "family_name": ("familyName", str),
    "nickname": ("nickname", str),
    "preferred_username": ("preferredUsername", str),
    "profile": ("profileUrl", str),
    "picture": ("pictureUrl", str),
    "website": ("websiteUrl", str),
    "email": ("email", str),
    "email_verified": ("emailVerified", bool),
    "gender": ("gender", str),
    "birthdate": ("birthday", str),
    "zoneinfo": ("timezone", str),
    "locale": ("language", str),
    "phone_number": ("phoneNumber", str),
    "phone_number_verified": ("phoneNumberVerified", bool),
}
# Registered JWT claims, which every identity leaves out (subject and issuer have their fields).
REGISTERED = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
# What varies between refreshes of one user's token (Clerk's factor verification age).
VOLATILE = frozenset({"fva"})
# ID-token housekeeping an OIDC identity leaves out, as Convex's OIDC library parses it away.
OIDC_HOUSEKEEPING = frozenset({"auth_time", "nonce", "acr", "amr", "azp", "at_hash", "c_hash"})


def identity_of(claims: dict[str, Any], *, oidc: bool, expires_at: float) -> Identity:
    issuer, subject = str(claims["iss"]), str(claims["sub"])
    identity = Identity(tokenIdentifier=f"{issuer}|{subject}", subject=subject, issuer=issuer)
    if oidc:
        identity.update(_oidc_fields(claims))
    else:
        identity.update(_flattened({k: v for k, v in claims.items() if k not in REGISTERED | VOLATILE}))
    identity.expires_at = expires_at
    return identity


def _oidc_fields(claims: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for claim, value in claims.items():
        if claim in REGISTERED or claim in VOLATILE or claim in OIDC_HOUSEKEEPING:
            continue
        standard = STANDARD_CLAIMS.get(claim)
        if standard is not None and isinstance(value, standard[1]):
            fields[standard[0]] = value
        elif claim == "address" and isinstance(value, dict) and isinstance(value.get("formatted"), str):
            fields["address"] = value["formatted"]
        elif claim == "updated_at" and isinstance(value, (int, float)) and not isinstance(value, bool):
            fields["updatedAt"] = datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat()
        elif claim == "updated_at" and isinstance(value, str):
            fields["updatedAt"] = value
        else:  # a custom claim, or a standard one of an unexpected type: under its own name
            fields[claim] = value
    return fields


def _flattened(claims: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in claims.items():
        if isinstance(value, dict) and value:
            out.update(_flattened(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def acting_as_identity(attributes: dict[str, Any]) -> Identity:
    """The identity an admin acts as (Convex's `impersonating` in Authenticate, the dashboard's
    "act as a user"): UserIdentityAttributes as Convex spells them, with a tokenIdentifier or an
    issuer and a subject to make one from. It does not expire."""
    fields = {k: v for k, v in attributes.items() if v is not None}
    issuer, subject = fields.get("issuer"), fields.get("subject")
    if not isinstance(fields.get("tokenIdentifier"), str):
        if not (isinstance(issuer, str) and isinstance(subject, str)):
            raise AuthFailed("the identity to act as needs a tokenIdentifier, or an issuer and a subject")
        fields["tokenIdentifier"] = f"{issuer}|{subject}"
    return Identity(fields)
