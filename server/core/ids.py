"""Document ids: opaque strings, unique across tables, that name their table.

Layout before encoding: table number (2 bytes, big endian) + 16 random bytes + 2-byte checksum
(the first two bytes of blake2b over the rest). Encoded in lowercase base32 without padding:
32 characters, like Convex ids. A typo or an id from another deployment fails the checksum.
"""

from __future__ import annotations

import base64
import hashlib
import os

from server.errors import InvalidIdError

ID_LENGTH = 32


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=2).digest()


def new_id(table_number: int) -> str:
    body = table_number.to_bytes(2, "big") + os.urandom(16)
    raw = body + _checksum(body)
    return base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def table_number_of(doc_id: object) -> int:
    """The table number an id belongs to; InvalidIdError when `doc_id` is not a Ripple id."""
    if not isinstance(doc_id, str) or len(doc_id) != ID_LENGTH:
        raise InvalidIdError(f"{doc_id!r} is not a valid document id")
    try:
        raw = base64.b32decode(doc_id.upper())
    except ValueError as exc:
        raise InvalidIdError(f"{doc_id!r} is not a valid document id") from exc
    body, check = raw[:18], raw[18:]
    if _checksum(body) != check:
        raise InvalidIdError(f"{doc_id!r} is not a valid document id (checksum mismatch)")
    return int.from_bytes(body[:2], "big")
