"""Pure unit tests: value encodings, index key order, ids."""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.core import keys
from server.core.ids import new_id, table_number_of
from server.core.values import (
    MAX_ARRAY_LEN,
    MAX_OBJECT_FIELDS,
    Int64,
    from_client_json,
    from_convex_json,
    from_plain_json,
    to_convex_json,
    to_plain_json,
)
from server.errors import InvalidIdError, ValueValidationError
from server.wire import loads

from reference import convex_cmp

# -- Convex values -------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(Int64),
    st.text(max_size=8),
    st.binary(max_size=8),
)
field_names = st.text(min_size=1, max_size=5).filter(lambda s: not s.startswith("$"))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(field_names, inner, max_size=4)),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Structural equality that tells Int64 from int, -0.0 from 0.0 and NaN from NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(values)
def test_convex_json_round_trips(value: Any) -> None:
    assert same(from_convex_json(to_convex_json(value)), value)


def test_special_encodings() -> None:
    assert to_convex_json(Int64(1)) == {"$integer": "AQAAAAAAAAA="}
    assert to_convex_json(b"\x00\x01") == {"$bytes": "AAE="}
    assert to_convex_json(float("inf")) == {"$float": "AAAAAAAA8H8="}
    assert to_convex_json(-0.0) == {"$float": "AAAAAAAAAIA="}
    assert to_convex_json(1.5) == 1.5 and to_convex_json(3) == 3
    assert from_convex_json({"$integer": "AQAAAAAAAAA="}) == 1
    assert isinstance(from_convex_json({"$integer": "AQAAAAAAAAA="}), Int64)
    assert from_convex_json({"$bytes": "AAE="}) == b"\x00\x01"


def test_plain_json_export() -> None:
    # As Convex's `export()`: int64 as a decimal string, float64 as a JSON number (a float).
    exported = to_plain_json({"a": Int64(5), "b": b"\x01", "c": float("nan"), "d": 2})
    assert exported == {"a": "5", "b": "AQ==", "c": "NaN", "d": 2.0} and type(exported["d"]) is float
    assert from_plain_json({"a": [1, 2.5]}) == {"a": [1, 2.5]}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"$weird": 1, "x": 2}, "field names may not start with '$'"),
        ({"a": {"$integer": "AQ=="}}, "a: $integer must hold 8 bytes"),
        ({"a": [{"$bytes": "%%%"}]}, "a[0]: $bytes is not valid base64"),
        (2**60, "outside the float64-exact range"),
    ],
)
def test_invalid_values_name_the_path(bad: Any, message: str) -> None:
    with pytest.raises(ValueValidationError, match=message.replace("[", r"\[").replace("$", r"\$")):
        from_convex_json(bad)


def test_unencodable_python_values_are_refused() -> None:
    with pytest.raises(ValueValidationError, match="x: set is not a Convex value"):
        to_convex_json({"x": {1, 2}})
    with pytest.raises(ValueValidationError, match="nested deeper"):
        deep: Any = 1
        for _ in range(70):
            deep = [deep]
        to_convex_json(deep)


# -- index key order -----------------------------------------------------------------------

key_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(),
        st.integers(-(2**63), 2**63 - 1).map(Int64), st.text(max_size=4), st.binary(max_size=4),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=2), inner, max_size=2)),
    max_leaves=6,
)


@settings(max_examples=400)
@given(key_values, key_values)
def test_key_encoding_preserves_convex_order(a: Any, b: Any) -> None:
    ka, kb = keys.encode_values([a]), keys.encode_values([b])
    expected = convex_cmp(a, b)
    got = (ka > kb) - (ka < kb)
    if expected == 0:
        assert got == 0 or (isinstance(a, float) and math.isnan(a))
    else:
        assert got == expected, (a, b)


@given(st.lists(key_values, min_size=1, max_size=3), key_values)
def test_prefix_bounds_hold_all_extensions(prefix: list[Any], extra: Any) -> None:
    p = keys.encode_values(prefix)
    full = keys.encode_values([*prefix, extra])
    assert p <= full < p + keys.AFTER_PREFIX


def test_missing_fields_sort_first() -> None:
    doc = {"_id": "x" * 32, "_creationTime": 1.0}
    k_missing = keys.index_key(doc, ["a", "_creationTime"])
    k_null = keys.index_key({**doc, "a": None}, ["a", "_creationTime"])
    assert k_missing < k_null


def test_sorting_many_values_matches_reference() -> None:
    sample = [None, True, False, 0, -1, 2.5, float("-inf"), Int64(-3), Int64(7), "", "a", "ab", "b",
              b"", b"\x00", [], [1], [1, 2], {}, {"a": 1}, keys.UNDEFINED, -0.0, "a\x00b"]
    by_key = sorted(sample, key=lambda v: keys.encode_values([v]))
    by_ref = sorted(sample, key=functools.cmp_to_key(convex_cmp))
    assert [repr(v) for v in by_key] == [repr(v) for v in by_ref]


# -- ids -----------------------------------------------------------------------------------


def test_ids_name_their_table_and_reject_typos() -> None:
    doc_id = new_id(7)
    assert len(doc_id) == 32 and doc_id.isalnum()
    assert table_number_of(doc_id) == 7
    typo = doc_id[:-1] + ("a" if doc_id[-1] != "a" else "b")
    with pytest.raises(InvalidIdError):
        table_number_of(typo)
    for bad in ("", "x" * 32, 17, None):
        with pytest.raises(InvalidIdError):
            table_number_of(bad)


def test_ids_are_exactly_lowercase_base32() -> None:
    doc_id = new_id(3)
    for variant in (doc_id.upper(), doc_id[:5].upper() + doc_id[5:], doc_id + "\n", " " + doc_id[1:]):
        if variant != doc_id:
            with pytest.raises(InvalidIdError, match="is not a valid document id"):
                table_number_of(variant)


def test_plain_json_input_has_the_same_depth_limit() -> None:
    def nest(levels: int) -> Any:
        value: Any = 1
        for i in range(levels):
            value = [value] if i % 2 else {"k": value}
        return value

    for decode in (from_plain_json, from_convex_json):
        assert decode(nest(64)) == nest(64)
        with pytest.raises(ValueValidationError, match=r"^k(\[0\]\.k)+: nested deeper than 64 levels$"):
            decode(nest(65))


@pytest.mark.parametrize("text", ["1152921504606846976", "1208925819614629174706176", "-1208925819614629174706176",
                                  "18446744073709551616", "-9223372036854775809"])
@pytest.mark.parametrize("decode", [from_plain_json, from_convex_json])
def test_json_integers_beyond_2_53_are_refused_whatever_their_size(text: str, decode: Any) -> None:
    """orjson decodes integers beyond 64 bits as floats; wire.loads keeps them integers, so
    2**80 is refused like 2**60 instead of passing as a float64."""
    value = loads(f'{{"a": [1.5, {text}], "s": "x"}}')
    assert value["a"][1] == int(text) and isinstance(value["a"][1], int)
    with pytest.raises(ValueValidationError, match=rf"^a\[1\]: integer {text} is outside the float64-exact range"):
        decode(value)
    assert loads(b"[1e30, 12345678901234567890.5]") == [1e30, 12345678901234567890.5]


# -- Convex's limits on values clients send -------------------------------------------------


@pytest.mark.parametrize("encoded", [True, False])
def test_client_values_within_convex_limits_pass(encoded: bool) -> None:
    value = {"xs": [1] * MAX_ARRAY_LEN, "o": {f"f{i}": i for i in range(MAX_OBJECT_FIELDS)}}
    assert from_client_json(value, encoded=encoded) == value


@pytest.mark.parametrize("encoded", [True, False])
def test_client_values_over_a_limit_are_refused_naming_the_limit_and_the_path(encoded: bool) -> None:
    cases: list[tuple[Any, str]] = [
        ({"rows": [{"xs": [0] * (MAX_ARRAY_LEN + 1)}]},
         r"^args\.rows\[0\]\.xs: arrays may hold at most 8192 elements; this one has 8193$"),
        ({"a": [1, {"o": {str(i): i for i in range(MAX_OBJECT_FIELDS + 1)}}]},
         r"^args\.a\[1\]\.o: objects may have at most 1024 fields; this one has 1025$"),
    ]
    for value, message in cases:
        with pytest.raises(ValueValidationError, match=message):
            from_client_json(value, encoded=encoded, path="args")


class Unread(list[Any]):
    """A list that fails the test when its elements are read."""

    def __iter__(self) -> Any:
        raise AssertionError("elements read")


def test_an_array_over_the_limit_is_refused_before_its_elements_are_looked_at() -> None:
    huge = Unread([0] * 8_000_000)
    with pytest.raises(ValueValidationError, match=r"^xs: arrays may hold at most 8192 elements; this one has 8000000$"):
        from_client_json({"xs": huge})


def test_values_ripple_wrote_itself_are_not_held_to_the_client_limits() -> None:
    """Documents and results (to_convex_json allows long arrays) read back as they were."""
    stored = {"xs": list(range(MAX_ARRAY_LEN * 2)), "o": {f"f{i}": i for i in range(MAX_OBJECT_FIELDS * 2)}}
    assert from_convex_json(to_convex_json(stored)) == stored


@pytest.mark.parametrize("decode", [from_plain_json, from_convex_json])
def test_a_bad_value_deep_in_a_long_array_is_named_by_its_first_occurrence(decode: Any) -> None:
    rows: list[Any] = [[1.5, "x", None, {"k": [True]}] for _ in range(200)]
    rows[150] = [1.5, {"k": [2**60]}]
    rows[170] = rows[150]  # the same object again: the first one is named
    with pytest.raises(ValueValidationError, match=r"^rows\[150\]\[1\]\.k\[0\]: integer 1152921504606846976 "):
        decode({"rows": rows})
