"""Validation as Convex's validators do it, built from pydantic types; and `Id["table"]`.

Convex validators never convert a value: `"5"` is not a number, `1` is not a boolean. pydantic's
lax mode converts both, and its strict mode refuses what Convex accepts (`2.0` for an `int`, which
is how clients send every number; a list for a tuple; a value for an Enum). So the pydantic core
schema of each argument model, return type and document model is rewritten once, at load time:

- `str`, `bool`, `float` and `bytes` are strict (a `float` still takes an integer: both are
  Convex numbers); containers, models, enums and literals keep pydantic's own rules.
- `int` takes an integer, or a float with an integral value within +-2**53 (a float64 holds those
  exactly), as an `int`; `2.5`, `"5"` and `True` are refused.
- A node that says `strict` itself (`StrictInt`, `Field(strict=False)`) keeps its own setting.
- Defaults are validated like given values; a default that does not validate is refused when the
  function or table is defined (`default_errors`).

pydantic reuses a model's own (lax) validator wherever the model appears in a schema, so a model
is validated here into a carrier object that has the model's name, then turned into an instance of
the model exactly as pydantic's own validator would (fields, extra, fields set, post-init).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, TypeVar, get_args, get_origin

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, SchemaValidator, core_schema

from server.core.ids import table_number_of
from server.core.values import MAX_SAFE_INT, MIN_SAFE_INT
from server.errors import InvalidIdError

# The validation context key holding the deployment's table names by number (ids embed the
# number). Without it, an `Id["t"]` is checked to be a well-formed id, not that it belongs to t.
TABLES = "ripple_tables"
TableNames = Mapping[int, str]

_STRICT_SCALARS = frozenset(("str", "bool", "float", "bytes"))
# Keys of a core schema node whose values are schemas (or lists / dicts of them).
_SCHEMA_KEYS = frozenset((
    "schema", "items_schema", "keys_schema", "values_schema", "choices", "fields", "definitions",
    "lax_schema", "strict_schema", "json_schema", "python_schema", "steps", "extras_schema",
    "extras_keys_schema", "arguments_schema",
))
_FIELD_KINDS = frozenset(("model-field", "typed-dict-field", "dataclass-field"))
_LABELS = {"none": "None"}


def format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


# Errors whose `input` is the object holding the bad field, not a bad value: never shown.
_INPUT_IS_PARENT = frozenset(("missing", "missing_argument", "missing_keyword_only_argument",
                              "missing_positional_only_argument"))


def describe_validation_error(exc: ValidationError, where: str = "") -> str:
    """One line per problem, each naming the path of the bad field (after `where`), with the bad
    value when it is short (a missing field's `input` would be the whole object: left out)."""
    lines = []
    for err in exc.errors(include_url=False):
        line = f"`{format_loc((where, *err['loc']) if where else err['loc'])}`: {err['msg']}"
        if err["type"] not in _INPUT_IS_PARENT:
            shown = repr(err.get("input"))
            if len(shown) <= 80:
                line += f" (got {shown})"
        lines.append(line)
    return "; ".join(lines)


# -- Id -------------------------------------------------------------------------------------------


_Table = TypeVar("_Table")

if TYPE_CHECKING:
    # What type checkers see: `Id[Literal["videos"]]` is a `str` (`str | Literal[...]`), as the
    # value is. They read the plain `Id["videos"]` as a forward reference to a type `videos`.
    Id: TypeAlias = str | _Table
else:
    class Id:
        """`Id["videos"]` (or `Id[Literal["videos"]]`): a document id of table `videos`, as
        Convex's `v.id("videos")` / `Id<"videos">`. The value is a plain `str`; validation refuses
        a string that is not an id and an id of another table, naming the field and the table."""

        def __class_getitem__(cls, table: Any) -> Any:
            if get_origin(table) is Literal and len(get_args(table)) == 1:
                (table,) = get_args(table)
            if not isinstance(table, str) or not table:
                raise TypeError(f'Id[...] takes a table name, as in Id["videos"], not {table!r}')
            return Annotated[str, IdOf(table)]


@dataclass(frozen=True)
class IdOf:
    """The pydantic metadata behind `Id[table]`."""

    table: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_after_validator_function(self.check, core_schema.str_schema(strict=True))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "format": "convex-id", "table": self.table}  # part of fingerprints

    def check(self, value: str, info: core_schema.ValidationInfo) -> str:
        expected = f'Id["{self.table}"]'
        try:
            number = table_number_of(value)
        except InvalidIdError:
            raise PydanticCustomError("convex_id", "Input should be an id of table {table} ({expected})",
                                      {"table": self.table, "expected": expected}) from None
        tables = info.context.get(TABLES) if isinstance(info.context, Mapping) else None
        if tables is not None and (found := tables.get(number)) != self.table:
            if found is None:
                raise PydanticCustomError("convex_id", "Input should be an id of table {table} ({expected}); "
                                          "it names no table of this deployment",
                                          {"table": self.table, "expected": expected})
            raise PydanticCustomError("convex_id_table", "Found an id of table {found}, which does not match "
                                      "table {table} ({expected})",
                                      {"found": found, "table": self.table, "expected": expected})
        return value


# -- rewriting core schemas -----------------------------------------------------------------------


def _integral(value: Any) -> Any:
    """A float with an integral value a float64 holds exactly -> int; anything else unchanged
    (the strict int schema after it decides)."""
    if type(value) is float and value.is_integer() and MIN_SAFE_INT <= value <= MAX_SAFE_INT:
        return int(value)
    return value


class _Carrier:
    """What a model's fields are validated into before the model instance is made (see module)."""

    __slots__ = ("__dict__", "__pydantic_extra__", "__pydantic_fields_set__", "__pydantic_private__")


@functools.cache
def _carrier(cls: type) -> type:
    return type(cls.__name__, (_Carrier,), {"__slots__": (), "__module__": cls.__module__})


def _model_builder(cls: Any, node: Mapping[str, Any]) -> Callable[..., Any]:
    """Turn the carrier into an instance of `cls` as pydantic-core's model validator does."""
    post_init, custom_init = node.get("post_init"), node.get("custom_init")
    setattr_ = object.__setattr__

    def build(value: Any, handler: core_schema.ValidatorFunctionWrapHandler, info: core_schema.ValidationInfo) -> Any:
        if isinstance(value, cls):
            return value  # an instance is taken as it is (pydantic's revalidate_instances="never")
        carrier = handler(value)
        if custom_init:  # the model's own __init__ (lax) runs over input that passed the checks
            return cls(**value)
        instance = cls.__new__(cls)
        setattr_(instance, "__dict__", carrier.__dict__)
        setattr_(instance, "__pydantic_extra__", getattr(carrier, "__pydantic_extra__", None))
        setattr_(instance, "__pydantic_fields_set__", carrier.__pydantic_fields_set__)
        setattr_(instance, "__pydantic_private__", None)
        if post_init:
            getattr(instance, post_init)(info.context)
        return instance

    return build


def _dataclass_builder(cls: type) -> Callable[..., Any]:
    """A pydantic dataclass is made by its own __init__ (lax) from fields that passed the checks."""

    def build(value: Any, handler: core_schema.ValidatorFunctionWrapHandler, info: core_schema.ValidationInfo) -> Any:
        if isinstance(value, cls):
            return value
        return cls(**handler(value).__dict__)

    return build


class _Rewriter:
    """One pass over a core schema (see the module docstring); collects static defaults."""

    def __init__(self) -> None:
        self.defaults: list[tuple[str, Any, CoreSchema]] = []  # (field path, default, schema)
        self.definitions: list[CoreSchema] = []

    def node(self, node: Any, where: str) -> Any:
        if isinstance(node, tuple):  # a union choice with its label
            return (self.node(node[0], where), *node[1:])
        if isinstance(node, list):
            return [self.node(n, where) for n in node]
        if not isinstance(node, dict):
            return node
        if "type" not in node:  # a mapping of fields or of tagged-union choices
            return {k: self.node(v, _join(where, k) if _is_field(v) else where) for k, v in node.items()}
        kind = node["type"]
        out = {}
        for key, value in node.items():
            if key not in _SCHEMA_KEYS:
                out[key] = value
            elif key == "fields" and kind == "dataclass-args":
                out[key] = [self.node(f, _join(where, f["name"])) for f in value]
            elif key == "fields" and isinstance(value, dict):  # by field name, and one may be named "type"
                out[key] = {name: self.node(f, _join(where, name)) for name, f in value.items()}
            else:
                out[key] = self.node(value, where)
        if kind == "union":
            pairs = zip(out["choices"], node["choices"], strict=True)
            out["choices"] = [c if isinstance(c, tuple) else (c, _label(o)) for c, o in pairs]
        if kind == "definitions":
            self.definitions.extend(out["definitions"])
        own = "strict" in node  # a scalar that sets its own strictness keeps it
        if kind in _STRICT_SCALARS and not own:
            out["strict"] = True
        elif kind == "int" and not own:
            out["strict"] = True
            return core_schema.no_info_before_validator_function(_integral, out)
        elif kind == "default":
            out.setdefault("validate_default", True)
            if "default" in node:
                self.defaults.append((where, node["default"], out["schema"]))
        elif kind == "model" or (kind == "dataclass" and "__pydantic_complete__" in vars(node["cls"])):
            return self.instance(out)
        return out

    def instance(self, node: dict[str, Any]) -> CoreSchema:
        """A model (or pydantic dataclass) node: validated into a carrier, then built."""
        cls = node["cls"]
        ref = node.pop("ref", None)
        carried = {**node, "cls": _carrier(cls)}
        if node["type"] == "model":
            carried["custom_init"] = False
            carried.pop("post_init", None)
            build = _model_builder(cls, node)
        else:
            carried["post_init"] = False
            build = _dataclass_builder(cls)
        return core_schema.with_info_wrap_validator_function(build, carried, ref=ref)


def _is_field(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") in _FIELD_KINDS


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _label(choice: Any) -> str:
    """How an error names a union member it tried: `x.int`, `x.None`, `x.Video`."""
    kind = choice.get("type", "") if isinstance(choice, dict) else ""
    if kind in ("model", "dataclass"):
        return str(choice["cls"].__name__)
    return _LABELS.get(kind, kind)


def convex_validator(schema: CoreSchema) -> tuple[SchemaValidator, list[str]]:
    """A validator for `schema` with Convex's rules, and what is wrong with its defaults (one
    message per default that does not validate, naming its field)."""
    rewriter = _Rewriter()
    rewritten = rewriter.node(schema, "")
    problems = []
    for where, default, field_schema in rewriter.defaults:
        check = core_schema.definitions_schema(field_schema, rewriter.definitions) if rewriter.definitions else field_schema
        try:
            SchemaValidator(check).validate_python(default)
        except ValidationError as exc:
            problems.append(f"invalid default: {describe_validation_error(exc, where)}")
    return SchemaValidator(rewritten), problems


def context(tables: TableNames | None) -> dict[str, Any] | None:
    """The validation context that lets `Id[...]` check tables."""
    return None if tables is None else {TABLES: tables}
