"""Convex's limits on stored documents, checked on what is about to be stored.

A document must fit Convex's limits (get-convex/convex-backend: `MAX_USER_SIZE` and
`MAX_DOCUMENT_NESTING` in crates/common/src/document.rs, `MAX_OBJECT_FIELDS` in
crates/value/src/object.rs, `MAX_ARRAY_LEN` in crates/value/src/array.rs, field names in
`check_valid_field_name`), so that what Ripple stores Convex would store too: 1 MiB, 1,024 fields
per object, 8,192 elements per array, 16 levels of nesting, field names of non-control ASCII
characters not starting with `$`, at most 1,024 long, strings without unpaired surrogates.

Sizes are Convex's `Size` of a value, not a JSON length: null and booleans 1 byte, numbers 9, a
string or bytes 2 plus its UTF-8 length, an array 2 plus its elements, an object 2 plus, per
field, the name's length, 1 and the value's size. A document's size counts `_id` and
`_creationTime` as Convex does. The walk reads the convex_encoded_json the write produces anyway
(`{"$integer"}`, `{"$float"}` and `{"$bytes"}` are the only objects with `$` names there), in one
pass that also checks everything else, and builds a field's path only for a document it refuses.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.errors import LimitExceeded

MAX_DOCUMENT_BYTES = 1 << 20
MAX_DOCUMENT_NESTING = 16
MAX_OBJECT_FIELDS = 1024
MAX_ARRAY_LEN = 8192
MAX_FIELD_NAME_LEN = 1024
SYSTEM_FIELDS_COUNT = 2  # `_id` and `_creationTime` are fields of the document object too
_NUMBER = 1 + 8
_SPECIAL = frozenset(("$integer", "$float"))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


class _Refused(Exception):
    """Raised inside the walk; each container adds its key on the way out (as values.py does)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.keys: list[str | int] = []

    def path(self) -> str:
        out = ""
        for key in reversed(self.keys):
            out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
        return out


def _string(s: str) -> int:
    if s.isascii():  # O(1) in CPython: a compact string knows it is ASCII
        return 2 + len(s)
    try:
        return 2 + len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Refused("strings must be valid Unicode; this one has an unpaired surrogate") from None


def _field_name(key: Any) -> None:
    if not isinstance(key, str):
        raise _Refused("object keys must be strings")
    if key[:1] == "$":
        raise _Refused(f"field name {key[:64]!r} starts with '$', which is reserved")
    if len(key) > MAX_FIELD_NAME_LEN:
        raise _Refused(f"field name is {len(key)} characters long; at most {MAX_FIELD_NAME_LEN} are allowed")
    if not (key.isascii() and key.isprintable()):
        bad = next(c for c in key if not (c.isascii() and c.isprintable()))
        raise _Refused(f"field name {key[:64]!r} has the character {bad!r}; field names may only "
                       "contain non-control ASCII characters")


def _value(v: Any, nesting: int) -> int:
    """The size of `v`, which lies inside a container of nesting level `nesting`."""
    t = type(v)
    if t is str:
        return _string(v)
    if t is float or t is int:
        return _NUMBER
    if t is dict:
        return _object(v, nesting + 1)
    if t is list:
        return _array(v, nesting + 1)
    if t is bool or v is None:
        return 1
    raise _Refused(f"{t.__name__} is not a stored value")


def _too_deep() -> _Refused:
    return _Refused(f"nested more than {MAX_DOCUMENT_NESTING} levels deep (Convex's maximum nesting of a document)")


def _array(v: list[Any], nesting: int) -> int:
    n = len(v)
    if n > MAX_ARRAY_LEN:
        raise _Refused(f"array has {n} elements; at most {MAX_ARRAY_LEN} are allowed")
    if nesting > MAX_DOCUMENT_NESTING:
        raise _too_deep()
    size = 2
    for i, item in enumerate(v):
        t = type(item)
        if t is float or t is int:
            size += _NUMBER
        elif t is str and item.isascii():
            size += 2 + len(item)
        else:
            try:
                size += _value(item, nesting)
            except _Refused as error:
                error.keys.append(i)
                raise
    return size


def _object(v: dict[str, Any], nesting: int, extra_fields: int = 0) -> int:
    n = len(v)
    if n == 1 and extra_fields == 0:
        ((key, inner),) = v.items()
        if key[:1] == "$":  # an encoded value; user field names never start with '$'
            if key in _SPECIAL:
                return _NUMBER
            if key == "$bytes" and type(inner) is str:
                return 2 + len(inner) * 3 // 4 - inner[-2:].count("=")
    if n + extra_fields > MAX_OBJECT_FIELDS:
        counted = f" ({n} and the 2 system fields)" if extra_fields else ""
        raise _Refused(f"object has {n + extra_fields} fields{counted}; at most {MAX_OBJECT_FIELDS} are allowed")
    if nesting > MAX_DOCUMENT_NESTING:
        raise _too_deep()
    size = 2
    for key, item in v.items():
        if type(key) is not str or not (key.isascii() and key.isprintable()) or key[:1] == "$" \
                or len(key) > MAX_FIELD_NAME_LEN:
            try:
                _field_name(key)
            except _Refused as error:
                error.keys.append(str(key))
                raise
        t = type(item)
        if t is float or t is int:
            size += len(key) + 1 + _NUMBER
        elif t is str and item.isascii():
            size += len(key) + 3 + len(item)
        else:
            try:
                size += len(key) + 1 + _value(item, nesting)
            except _Refused as error:
                error.keys.append(key)
                raise
    return size


def _system_fields_size(doc_id: str) -> int:
    return len("_id") + 1 + 2 + len(doc_id) + len("_creationTime") + 1 + _NUMBER


def check_document(table: str, doc_id: str, encoded: dict[str, Any]) -> int:
    """The Convex size of the document `doc_id` of `table` whose user fields are `encoded`
    (convex_encoded_json), after checking it against Convex's limits. Raises LimitExceeded naming
    the table, the document, the field and the figure that is over."""
    try:
        size = _object(encoded, 1, SYSTEM_FIELDS_COUNT) + _system_fields_size(doc_id)
    except _Refused as error:
        where = error.path()
        raise LimitExceeded(
            f"table `{table}`, document {doc_id}" + (f", field `{where}`" if where else "") + f": {error.message}"
        ) from None
    if size > MAX_DOCUMENT_BYTES:
        raise LimitExceeded(
            f"table `{table}`, document {doc_id}: the document is {_mib(size)} ({size} bytes); "
            f"at most {_mib(MAX_DOCUMENT_BYTES)} ({MAX_DOCUMENT_BYTES} bytes) may be stored"
        )
    return size


def stored_bytes(encoded: Any) -> int:
    """What a document read counts towards the transaction's bytes read: the length of its stored
    JSON. Not Convex's size (numbers count their digits, not 9 bytes): computing that for every
    document read cost about 40% of reading it, this about 3%."""
    return len(orjson.dumps(encoded))


def value_size(value: Any) -> int:
    """A Python value's size as Convex counts it (crates/value/src/size.rs), for pagination's
    `maximumBytesRead`; `_value` counts the same on encoded JSON: a string or bytes 2 + its
    length in bytes, a number 9, null and booleans 1, an array 2 + its elements, an object 2 +
    for each field its name's length + 1 + its value."""
    if isinstance(value, str):
        return len(value.encode()) + 2
    if isinstance(value, bytes):
        return len(value) + 2
    if isinstance(value, dict):
        return 2 + sum(len(name.encode()) + 1 + value_size(item) for name, item in value.items())
    if isinstance(value, list | tuple):
        return 2 + sum(value_size(item) for item in value)
    if value is None or isinstance(value, bool):
        return 1
    return 9
