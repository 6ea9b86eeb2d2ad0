"""A slow, obviously-correct model of Convex's value order, to test the byte keys against."""

from __future__ import annotations

import math
from typing import Any

from server.core import keys
from server.core.values import Int64

TYPE_RANK = {type(None): 1, Int64: 2, float: 3, bool: 4, str: 5, bytes: 6, list: 7, dict: 8}


def rank(v: Any) -> int:
    if v is keys.UNDEFINED:
        return 0
    if isinstance(v, bool):
        return TYPE_RANK[bool]
    if isinstance(v, Int64):
        return TYPE_RANK[Int64]
    if isinstance(v, (int, float)):
        return TYPE_RANK[float]
    return TYPE_RANK[type(v)]


def convex_cmp(a: Any, b: Any) -> int:
    """Reference order: undefined < null < int64 < float64 < bool < string < bytes < array < object."""
    ra, rb = rank(a), rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        fa, fb = (int(a), int(b)) if isinstance(a, Int64) else (float(a), float(b))
        if isinstance(fa, float) and (math.isnan(fa) or math.isnan(fb)):
            na, nb = math.isnan(fa), math.isnan(fb)
            return (na > nb) - (na < nb)
        if fa == fb and isinstance(fa, float):  # -0.0 sorts before 0.0
            sa, sb = math.copysign(1, fa), math.copysign(1, fb)
            return (sa > sb) - (sa < sb)
        return (fa > fb) - (fa < fb)
    if isinstance(a, str):
        ea, eb = a.encode(), b.encode()
        return (ea > eb) - (ea < eb)
    if isinstance(a, (bool, bytes)):
        return (a > b) - (a < b)
    if isinstance(a, list):
        for x, y in zip(a, b, strict=False):
            c = convex_cmp(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if isinstance(a, dict):
        return convex_cmp(
            [[k, a[k]] for k in sorted(a, key=str.encode)], [[k, b[k]] for k in sorted(b, key=str.encode)]
        )
    return 0
