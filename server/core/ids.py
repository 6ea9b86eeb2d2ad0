"""Document ids: opaque strings, unique across tables, that name their table.

Layout before encoding: table number (2 bytes, big endian) + 16 random bytes + 2-byte checksum
(the first two bytes of blake2b over the rest). Encoded in lowercase base32 without padding:
32 characters, like Convex ids. The checksum catches typos (all but about 1 in 65536); it is not
keyed, so it does not tell deployments apart: an id from another deployment passes it and is
looked up by its table number like any other.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

from server.errors import InvalidIdError

ID_LENGTH = 32
_ID_RE = re.compile(f"[a-z2-7]{{{ID_LENGTH}}}")  # exactly what new_id produces


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=2).digest()


def new_id(table_number: int) -> str:
    body = table_number.to_bytes(2, "big") + os.urandom(16)
    raw = body + _checksum(body)
    return base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def table_number_of(doc_id: object) -> int:
    """The table number an id belongs to; InvalidIdError when `doc_id` is not a Ripple id."""
    # Only the canonical (lowercase) spelling: ids are compared and stored as strings, so an
    # upper-case variant that decodes to the same bytes would name no document.
    if not isinstance(doc_id, str) or not _ID_RE.fullmatch(doc_id):
        raise InvalidIdError(f"{doc_id!r} is not a valid document id")
    try:
        raw = base64.b32decode(doc_id.upper())
    except ValueError as exc:
        raise InvalidIdError(f"{doc_id!r} is not a valid document id") from exc
    body, check = raw[:18], raw[18:]
    if _checksum(body) != check:
        raise InvalidIdError(f"{doc_id!r} is not a valid document id (checksum mismatch)")
    return int.from_bytes(body[:2], "big")
