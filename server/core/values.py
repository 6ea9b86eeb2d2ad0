"""Convex values in Python, and their two JSON forms.

Longer than 400 lines because both directions of one format (stored, wire, client input) share
its rules (field names, nesting, safe integers) and the lazily built error paths; split, each half
would reach into the other's internals.

Mapping (the same one the PyPI `convex` client uses):

    Convex type   Python            convex_encoded_json            json (plain export)
    null          None              null                           null
    boolean       bool              true / false                   true / false
    float64       float, int*       number, or {"$float": b64}     number, or "NaN"/"Infinity"/...
    int64         Int64             {"$integer": b64(i64 LE)}      decimal string
    string        str               string                         string
    bytes         bytes             {"$bytes": b64}                base64 string
    array         list (tuple in)   array                          array
    object        dict[str, ...]    object                         object

* A plain Python `int` is a float64 whose value is integral; it must lie within +-2**53, the
  range a float64 holds exactly. JSON numbers without a fraction decode to `int` (exactly, at any
  size: server.wire.loads), so a function typed `int` accepts what JavaScript clients send, and
  an integer literal beyond +-2**53 is refused whatever its size, never rounded to a float.
  Stored documents keep such integers as JSON integers; what clients receive writes them as
  floats (`2.0`), as Convex does (`to_wire_json`), with object fields sorted (`dumps`).

`UNSET` (Convex's `undefined`, server/core/absent.py): an object field holding it is left out, as
JavaScript leaves out `undefined` fields; anywhere else it is refused.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from server.core.absent import NOT_A_VALUE, UNSET, Absent
from server.errors import ValueValidationError

MIN_SAFE_INT = -(2**53)
MAX_SAFE_INT = 2**53
MIN_INT64 = -(2**63)
MAX_INT64 = 2**63 - 1
MAX_NESTING = 64
MAX_FIELD_NAME_LEN = 1024
# Convex's limits on a value (get-convex/convex-backend crates/value: MAX_ARRAY_LEN in array.rs,
# MAX_OBJECT_FIELDS in object.rs), applied to values clients send (`from_client_json`).
MAX_ARRAY_LEN = 8192
MAX_OBJECT_FIELDS = 1024


class Int64(int):
    """A Convex int64 (a JavaScript `bigint`). Plain `int` values are float64 on the wire."""

    def __new__(cls, value: int) -> Int64:
        if not MIN_INT64 <= int(value) <= MAX_INT64:
            raise ValueValidationError(f"{value} does not fit in an int64")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Int64({int(self)})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # strict: an integer (an Int64 or a plain int), never a float or a numeric string
        return core_schema.no_info_after_validator_function(
            cls, core_schema.int_schema(ge=MIN_INT64, le=MAX_INT64, strict=True)
        )


Value = Any  # None | bool | float | int | Int64 | str | bytes | list[Value] | dict[str, Value]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Invalid(Exception):
    """Raised inside the converters below; each container level adds its key on the way out, so
    the path of a bad value is built only when there is one (building it for every value was
    most of the cost of decoding a large argument)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.keys: list[str | int] = []
        self.value: Any = None  # the value whose conversion failed, at the level unwound to

    def error(self, prefix: str) -> ValueValidationError:
        path = prefix
        for key in reversed(self.keys):
            path = _join(path, key)
        return ValueValidationError(f"{path or 'value'}: {self.message}")


_PASS = frozenset((str, float, bool, type(None)))  # converted to themselves, in either format


def _plain_int(v: int) -> int:
    if not MIN_SAFE_INT <= v <= MAX_SAFE_INT:
        raise _Invalid(
            f"integer {v} is outside the float64-exact range (+-2**53); "
            'use {"$integer": ...} (server.Int64) for 64-bit integers'
        )
    return v


def _too_deep(v: Sequence[Any] | Mapping[Any, Any]) -> None:
    """`v`, at MAX_NESTING, holds something: that is one level too deep (named by its first)."""
    error = _Invalid(f"nested deeper than {MAX_NESTING} levels")
    error.keys.append(next(iter(v)) if isinstance(v, Mapping) else 0)
    raise error


_INF = math.inf


class _Encoder:
    """Python values -> convex_encoded_json, the other direction of `_Decoder` (same nesting
    limit and field name rules, same lazily built paths). With `wire`, in the form Convex puts
    on the wire: a plain `int` (a float64 whose value is integral) is written as a JSON float
    (`2.0`), as Convex's backend writes every float64; stored documents keep `2`."""

    __slots__ = ("wire",)

    def __init__(self, wire: bool) -> None:
        self.wire = wire

    def value(self, v: Any, depth: int) -> Any:
        try:
            t = type(v)
            if t is str or t is bool or v is None:
                return v
            if t is int:
                return float(_plain_int(v)) if self.wire else _plain_int(v)
            if t is float:
                return _float(v)
            if t is list or t is tuple:
                return self.array(v, depth)
            if t is dict:
                return self.object(v, depth)
            return self.other(v, depth)
        except _Invalid as error:
            error.value = v
            raise

    def other(self, v: Any, depth: int) -> Any:
        if v is UNSET:
            raise Absent  # the object holding it leaves the field out; elsewhere it is refused
        if isinstance(v, (bool, str)):
            return v
        if isinstance(v, Int64):
            return {"$integer": _b64(struct.pack("<q", v))}
        if isinstance(v, int):
            return float(_plain_int(v)) if self.wire else _plain_int(v)
        if isinstance(v, float):
            return _float(v)
        if isinstance(v, (bytes, bytearray, memoryview)):
            return {"$bytes": _b64(bytes(v))}
        if isinstance(v, Mapping):
            return self.object(v, depth)
        if isinstance(v, Sequence):
            return self.array(v, depth)
        raise _Invalid(f"{type(v).__name__} is not a Convex value "
                       "(use None, bool, int, float, Int64, str, bytes, list or dict)")

    def array(self, v: Sequence[Any], depth: int) -> list[Any]:
        if depth >= MAX_NESTING and len(v):
            _too_deep(v)
        convert, inner = self.value, depth + 1
        # Passed as they are: strings, ordinary floats and (unless on the wire) safe integers.
        lo, hi = (1, 0) if self.wire else (MIN_SAFE_INT, MAX_SAFE_INT)
        try:
            return [
                item if (t := type(item)) is str or (t is int and lo <= item <= hi)
                or (t is float and -_INF < item < _INF and item != 0.0) else convert(item, inner)
                for item in v
            ]
        except _Invalid as error:
            error.keys.append(next(i for i, item in enumerate(v) if item is error.value))
            raise
        except Absent:  # an element is UNSET
            misplaced = _Invalid(NOT_A_VALUE)
            misplaced.keys.append(next(i for i, item in enumerate(v) if item is UNSET))
            raise misplaced from None

    def object(self, v: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        if depth >= MAX_NESTING and len(v):
            _too_deep(v)
        convert, inner = self.value, depth + 1
        lo, hi = (1, 0) if self.wire else (MIN_SAFE_INT, MAX_SAFE_INT)
        out = {}
        try:
            for key, item in v.items():
                if type(key) is not str or key[:1] == "$" or len(key) > MAX_FIELD_NAME_LEN:
                    _check_key(key)
                out[key] = (
                    item if (t := type(item)) is str or (t is int and lo <= item <= hi)
                    or (t is float and -_INF < item < _INF and item != 0.0) else convert(item, inner)
                )
        except _Invalid as error:
            if error.value is not None:
                error.keys.append(next(key for key, item in v.items() if item is error.value))
            raise
        except Absent:  # a field of this object is UNSET: encode it again without such fields
            return self.object({key: item for key, item in v.items() if item is not UNSET}, depth)
        return out


def _float(v: float) -> Any:
    if math.isfinite(v) and not (v == 0.0 and math.copysign(1.0, v) < 0):
        return v
    return {"$float": _b64(struct.pack("<d", v))}


_STORAGE = _Encoder(wire=False)
_WIRE = _Encoder(wire=True)


def to_convex_json(value: Value, path: str = "") -> Any:
    """Python value -> convex_encoded_json as it is stored (plain integers stay JSON integers).
    Raises ValueValidationError naming the path (after `path`) of what cannot be encoded."""
    return _encode(_STORAGE, value, path)


def to_wire_json(value: Value, path: str = "") -> Any:
    """Python value -> convex_encoded_json as clients receive it: every float64 a JSON float,
    integral ones included (`2.0`), as Convex writes them; the PyPI client refuses `2`. Object
    fields are put in Convex's order (sorted) when serialized: see `dumps`."""
    return _encode(_WIRE, value, path)


def _encode(encoder: _Encoder, value: Value, path: str) -> Any:
    try:
        return encoder.value(value, 0)
    except _Invalid as error:
        failure = error.error(path)
    except Absent:
        failure = ValueValidationError(f"{path or 'value'}: {NOT_A_VALUE}")
    except RecursionError:  # a self-containing list or dict, or subclasses the depth check misses
        failure = ValueValidationError(f"{path or 'value'}: nested deeper than {MAX_NESTING} levels")
    raise failure  # out here, so that its context is what the caller was handling, if anything


def digest(value: Value) -> str:
    """A hash of a value, equal for equal values whatever the order of their objects' keys."""
    encoded = orjson.dumps(to_convex_json(value), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()


class _Decoder:
    """JSON (as orjson or wire.loads decoded it) -> Python values: convex_encoded_json when
    `encoded`, else the plain `json` input format. With `limits`, Convex's limits on values a
    client sends are applied too (MAX_ARRAY_LEN elements per array, MAX_OBJECT_FIELDS fields per
    object), each refused before its contents are looked at."""

    __slots__ = ("encoded", "limits")

    def __init__(self, encoded: bool, limits: bool) -> None:
        self.encoded, self.limits = encoded, limits

    def value(self, v: Any, depth: int) -> Value:
        try:
            t = type(v)
            if t in _PASS:
                return v
            if t is int:
                return _plain_int(v)
            if t is list:
                return self.array(v, depth)
            if t is dict:
                return self.object(v, depth)
            return self.other(v, depth)
        except _Invalid as error:
            error.value = v  # the array holding it looks for it to name its index
            raise

    def other(self, v: Any, depth: int) -> Value:
        """Subclasses of the JSON types (values built in Python rather than decoded)."""
        if v is None or isinstance(v, (bool, str, float)):
            return v
        if isinstance(v, int):
            return _plain_int(v)
        if isinstance(v, list):
            return self.array(v, depth)
        if isinstance(v, dict):
            return self.object(v, depth)
        raise _Invalid("not a JSON value")

    def array(self, v: list[Any], depth: int) -> list[Any]:
        if self.limits and len(v) > MAX_ARRAY_LEN:
            raise _Invalid(f"arrays may hold at most {MAX_ARRAY_LEN} elements; this one has {len(v)}")
        if depth >= MAX_NESTING and v:
            _too_deep(v)
        convert, passing, inner = self.value, _PASS, depth + 1
        lo, hi = MIN_SAFE_INT, MAX_SAFE_INT
        try:
            return [
                item if (t := type(item)) in passing or (t is int and lo <= item <= hi) else convert(item, inner)
                for item in v
            ]
        except _Invalid as error:
            # The first element that is this very object failed (an earlier one would have).
            error.keys.append(next(i for i, item in enumerate(v) if item is error.value))
            raise

    def object(self, v: dict[str, Any], depth: int) -> Value:
        n = len(v)
        if n == 1 and self.encoded:
            ((key, inner),) = v.items()
            if key in _ENCODINGS:
                return _decode_special(key, inner)
        if n > MAX_OBJECT_FIELDS and self.limits:
            raise _Invalid(f"objects may have at most {MAX_OBJECT_FIELDS} fields; this one has {n}")
        if depth >= MAX_NESTING and n:
            _too_deep(v)
        convert, passing, inner, lo, hi = self.value, _PASS, depth + 1, MIN_SAFE_INT, MAX_SAFE_INT
        out = {}
        try:
            for key in _in_order(v):
                if type(key) is not str or key[:1] == "$" or len(key) > MAX_FIELD_NAME_LEN:
                    _check_key(key)
                item = v[key]
                out[key] = item if (t := type(item)) in passing or (t is int and lo <= item <= hi) else convert(item, inner)
        except _Invalid as error:
            if error.value is not None:  # a field's value failed (not its name)
                error.keys.append(next(key for key, item in v.items() if item is error.value))
            raise
        return out


def _in_order(v: Mapping[Any, Any]) -> list[Any]:
    """An object's field names in Convex's order: sorted (by code point, which is the byte order
    of their UTF-8). PostgreSQL's jsonb keeps keys shortest first; Convex objects are sorted
    maps, and a function sees its documents and arguments the way a Convex function would."""
    try:
        return sorted(v)
    except TypeError:  # a key that is not a string: refused by _check_key
        return list(v)


def _check_key(key: Any) -> None:
    """Refuse a field name as check_field_name does, with the same messages."""
    if not isinstance(key, str):
        raise _Invalid("object keys must be strings")
    if key.startswith("$"):
        error = _Invalid("field names may not start with '$'")
        error.keys.append(key)
        raise error
    if len(key) > MAX_FIELD_NAME_LEN:
        raise _Invalid(f"field name longer than {MAX_FIELD_NAME_LEN} characters")


def _decode_special(key: str, inner: Any) -> Value:
    if key == "$bytes":
        return _unb64_inner(inner, key)
    raw = _unb64_inner(inner, key)
    if len(raw) != 8:
        raise _Invalid(f"{key} must hold 8 bytes")
    if key == "$integer":
        return Int64(struct.unpack("<q", raw)[0])
    return float(struct.unpack("<d", raw)[0])


def _unb64_inner(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise _Invalid(f"{what} must hold a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise _Invalid(f"{what} is not valid base64") from None


_ENCODINGS = frozenset(("$integer", "$float", "$bytes"))
_STORED = _Decoder(encoded=True, limits=False)
_CLIENT_ENCODED = _Decoder(encoded=True, limits=True)
_CLIENT_PLAIN = _Decoder(encoded=False, limits=True)


def _decode(decoder: _Decoder, value: Any, path: str) -> Value:
    try:
        return decoder.value(value, 0)
    except _Invalid as error:
        failure = error.error(path)
    except RecursionError:  # only through subclasses of dict or list, which the depth check misses
        failure = ValueValidationError(f"{path or 'value'}: nested deeper than {MAX_NESTING} levels")
    raise failure  # (see to_convex_json)


def from_convex_json(value: Any, path: str = "") -> Value:
    """convex_encoded_json -> Python value. Raises ValueValidationError naming the bad path.
    For values Ripple wrote itself (documents, stored results) and clients' results: only the
    nesting limit applies. Values from clients go through `from_client_json`."""
    return _decode(_STORED, value, path)


def from_client_json(value: Any, encoded: bool = True, path: str = "") -> Value:
    """A value a client sent (function arguments: HTTP bodies, websocket messages) -> Python
    value, in convex_encoded_json (`encoded`) or the plain `json` input format, within Convex's
    limits: at most MAX_ARRAY_LEN elements per array, MAX_OBJECT_FIELDS fields per object and
    MAX_NESTING levels. A value over a limit is refused as soon as the converter reaches it,
    before its contents are looked at, with the limit and the path in the message."""
    return _decode(_CLIENT_ENCODED if encoded else _CLIENT_PLAIN, value, path)


def to_plain_json(value: Value) -> Any:
    """Python value -> the `json` export format, as Convex exports values: float64 as JSON
    numbers (integral ones as `2.0`), special floats as strings, int64 as a decimal string,
    bytes as base64 (lossy: a string and bytes look alike)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return str(int(value)) if isinstance(value, Int64) else float(_plain_json_int(value))
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _b64(bytes(value))
    if isinstance(value, Mapping):
        return {str(k): to_plain_json(v) for k, v in value.items() if v is not UNSET}
    if isinstance(value, Sequence):
        return [to_plain_json(v) for v in value]
    raise ValueValidationError(f"{type(value).__name__} is not a Convex value")


def _plain_json_int(v: int) -> int:
    try:
        return _plain_int(v)
    except _Invalid as error:
        raise ValueValidationError(error.message) from None


def dumps(value: Any) -> bytes:
    """Serialize what goes to a client (a `to_wire_json` value, or a message holding some):
    object fields sorted, Convex's order, wherever the value was built."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def kept(encoded: bytes) -> bytes:
    """orjson's output as bytes to keep (a result, a key): orjson hands back its whole growth
    buffer, at least 4 KB of memory however short the text, so a small value held for as long
    as a subscription lives is copied into a bytes object of its own size."""
    return bytes(memoryview(encoded))


def from_plain_json(value: Any, path: str = "") -> Value:
    """The `json` input format: plain JSON, no `$` encodings; keys starting with '$' refused.
    Only clients send it, so Convex's limits apply (`from_client_json`)."""
    return from_client_json(value, encoded=False, path=path)
