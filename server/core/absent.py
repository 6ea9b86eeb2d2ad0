"""Convex's `undefined` in Python: `UNSET`, the value of a field that is absent.

Convex has no `undefined` value, but JavaScript code uses it to say "no such field": an object
field set to `undefined` is left out (`{a: 1, b: undefined}` is stored and sent as `{a: 1}`),
`db.patch(id, {b: undefined})` removes `b`, and `q.eq("b", undefined)` finds the documents
without `b`. Elsewhere, as an array element or a value by itself, `undefined` is refused.
`UNSET` (exported as `server.UNSET`) means the same, with the same rules, wherever Ripple takes a
value from Python code: documents written, function arguments and results, index ranges.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.errors import ValueValidationError

NOT_A_VALUE = "UNSET (undefined) is not a Convex value; it only stands for an absent object field"


class Unset:
    """The type of `UNSET`, its one instance."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNSET"  # copies and pickles are the one instance


UNSET = Unset()


class Absent(Exception):
    """Raised by a converter that meets UNSET: only the object holding it gives it a meaning."""


_LEAVES = frozenset((str, int, float, bool, type(None), bytes))


class _Misplaced(Exception):
    def __init__(self) -> None:
        super().__init__(NOT_A_VALUE)
        self.keys: list[str | int] = []  # the path, innermost first


def _without(value: Any) -> Any:
    """`value` without UNSET fields, copying only the containers that held one."""
    if isinstance(value, Mapping):
        copy: Any = None
        for key, item in value.items():
            if type(item) in _LEAVES:
                continue
            try:
                new = UNSET if item is UNSET else _without(item)
            except _Misplaced as error:
                error.keys.append(key)
                raise
            if new is item and new is not UNSET:
                continue
            if copy is None:
                copy = dict(value)
            if new is UNSET:
                del copy[key]
            else:
                copy[key] = new
        return value if copy is None else copy
    if isinstance(value, (list, tuple)):
        copy = None
        for i, item in enumerate(value):
            if type(item) in _LEAVES:
                continue
            if item is UNSET:
                misplaced = _Misplaced()
                misplaced.keys.append(i)
                raise misplaced
            try:
                new = _without(item)
            except _Misplaced as error:
                error.keys.append(i)
                raise
            if new is not item:
                if copy is None:
                    copy = list(value)
                copy[i] = new
        return value if copy is None else copy
    return value


def drop_unset(value: Any, path: str = "") -> Any:
    """`value` with every object field holding UNSET left out, at any depth (the object itself
    when it holds none). UNSET as an array element, or as `value` itself, raises
    ValueValidationError naming its path (after `path`)."""
    try:
        if value is UNSET:
            raise _Misplaced
        return _without(value)
    except _Misplaced as error:
        where = path
        for key in reversed(error.keys):
            where = f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else str(key))
        raise ValueValidationError(f"{where or 'value'}: {NOT_A_VALUE}") from None
    except RecursionError:  # a self-containing value: the encoder refuses it for its depth
        return value
