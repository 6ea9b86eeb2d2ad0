"""Large Transitions as TransitionChunk messages, as Convex's backend sends them.

Convex (convex-backend crates/local_backend/src/subs/mod.rs, `maybe_split_transition`) sends a
Transition larger than 5,000,000 bytes as TransitionChunk messages: consecutive pieces of the
Transition's JSON of at most 5,000,000 bytes each, cut between UTF-8 characters, each as the
string `chunk` with `partNumber`, `totalParts` and a `transitionId` (the JSON's length), and
nothing sent between them. A Transition that size is a download that can take longer than the
60 s of silence after which the npm client gives up on the server and reconnects; the parts keep
it talking. Only the npm client reassembles them, from 1.28.0 on (crates/common/src/version.rs,
MIN_NPM_VERSION_FOR_TRANSITION_CHUNKS); the Rust-based clients (PyPI `convex`) fail on one
("Unexpected TransitionChunk message received"), so they, and any client that does not say it is
npm, get whole Transitions, as from Convex.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson

CHUNK_BYTES = 5_000_000
CHUNKS_SINCE_NPM = (1, 28, 0)
_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
_VERSIONED_PATH = re.compile(r"/api/([^/]+)/sync")


def _npm_with_chunks(version: str) -> bool:
    match = _SEMVER.fullmatch(version)
    if match is None:
        return False
    release = (int(match[1]), int(match[2]), int(match[3]))
    return release > CHUNKS_SINCE_NPM or (release == CHUNKS_SINCE_NPM and match[4] is None)


def accepts_chunks(path: str, client_header: str | None) -> bool:
    """Does this client reassemble TransitionChunk messages? Decided as Convex decides: by the
    `Convex-Client` header when there is one (`npm-1.49.0`, `python-0.8.1`: a name, then the
    longest semver from the right), else by the version in the path (`/api/1.49.0/sync`, which
    only the npm client sends)."""
    if client_header is not None:
        parts = client_header.split("-")
        for n in range(1, len(parts)):
            version = "-".join(parts[n:])
            if _SEMVER.fullmatch(version):
                return "-".join(parts[:n]) == "npm" and _npm_with_chunks(version)
        return False
    match = _VERSIONED_PATH.fullmatch(path)
    return match is not None and _npm_with_chunks(match[1])


def transition_chunks(encoded: bytes, part_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The serialized Transition `encoded` as serialized TransitionChunk messages, each made only
    when the caller asks for the next one: besides `encoded`, one part exists at a time."""
    assert part_bytes >= 4, "a UTF-8 sequence is up to 4 bytes"
    cuts = [0]
    while len(encoded) - cuts[-1] > part_bytes:
        cut = cuts[-1] + part_bytes
        while encoded[cut] & 0xC0 == 0x80:  # inside a UTF-8 sequence: cut before it
            cut -= 1
        cuts.append(cut)
    cuts.append(len(encoded))
    total, transition_id, view = len(cuts) - 1, str(len(encoded)), memoryview(encoded)
    for number in range(total):
        piece = str(view[cuts[number]:cuts[number + 1]], "utf-8")
        yield orjson.dumps({"type": "TransitionChunk", "chunk": piece, "partNumber": number,
                            "totalParts": total, "transitionId": transition_id})
