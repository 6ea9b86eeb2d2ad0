"""Convex's "uniform" export encoding (`ValueFormat::ConvexExportJSON`), which its snapshot
export writes and marks with a `"uniform"` line in each table's `generated_schema.jsonl`: int64 as
a JSON integer, float64 as a JSON number with a fraction or exponent (`36.0`), special floats and
bytes as in the encoded format (`{"$float": ...}`, `{"$bytes": ...}`). Both directions work on
JSON trees: a stored document (encoded JSON) to a line, a line back to encoded JSON."""

from __future__ import annotations

import base64
import struct
from typing import Any

_INT64 = (-(2**63), 2**63 - 1)


class NotInt64(ValueError):
    """A JSON integer outside int64's range."""


def to_uniform(value: Any) -> Any:
    """Encoded JSON (as Ripple stores documents) -> the uniform export encoding."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):  # stored documents may hold an integral float64 as a JSON integer
        return float(value)
    if isinstance(value, list):
        return [to_uniform(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "$integer" in value:
            (n,) = struct.unpack("<q", base64.b64decode(value["$integer"]))
            return n
        return {k: to_uniform(v) for k, v in value.items()}
    return value


def from_uniform(value: Any) -> Any:
    """The uniform export encoding (as parsed: integers as int, other numbers as float) ->
    encoded JSON. NotInt64 for an integer int64 cannot hold."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise NotInt64(f"{value} is outside int64's range")
        return {"$integer": base64.b64encode(struct.pack("<q", value)).decode()}
    if isinstance(value, list):
        return [from_uniform(v) for v in value]
    if isinstance(value, dict):
        return {k: from_uniform(v) for k, v in value.items()}
    return value
