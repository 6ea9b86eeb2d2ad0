"""The application schema: tables of pydantic-validated documents with named indexes."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import SchemaValidator

from server.core.absent import drop_unset
from server.core.validation import TableNames, context, convex_validator, describe_validation_error
from server.core.values import to_convex_json
from server.errors import DocumentValidationError, SchemaError, ValueValidationError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
MAX_NAME_LEN = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1), for table names
MAX_INDEX_NAME_LEN = MAX_NAME_LEN - len("k_")  # an index's key column is `k_<index name>`
SYSTEM_FIELDS = ("_id", "_creationTime")
CREATION_TIME = "_creationTime"
BY_CREATION_TIME = "by_creation_time"
BY_ID = "by_id"
# Convex's limits (docs.convex.dev/production/state/limits; crates/search/src/constants.rs).
MAX_SEARCH_INDEXES = 4  # per table
MAX_VECTOR_INDEXES = 4  # per table
MAX_FILTER_FIELDS = 16  # per search or vector index
MIN_DIMENSIONS, MAX_DIMENSIONS = 2, 4096


@dataclass(frozen=True)
class SearchIndex:
    """A full-text search index over the string field `search_field` (a dotted path may reach into
    nested objects), with `filter_fields` that a search can require to equal given values."""

    search_field: str
    filter_fields: Sequence[str] = ()


@dataclass(frozen=True)
class VectorIndex:
    """A vector index over `vector_field` (a list of `dimensions` floats), searched by cosine
    similarity from actions (`ctx.vector_search`), with `filter_fields` to restrict by equality."""

    vector_field: str
    dimensions: int
    filter_fields: Sequence[str] = ()


_SPELLINGS = {
    "search_field": ("search_field", "searchField"),
    "vector_field": ("vector_field", "vectorField"),
    "filter_fields": ("filter_fields", "filterFields"),
    "dimensions": ("dimensions",),
}


def _declared(kind: type[Any], where: str, value: Any) -> Any:
    """A SearchIndex / VectorIndex as given, or built from a dict in either spelling
    (`{"search_field": "body"}` or Convex's `{"searchField": "body"}`)."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where}: give a {kind.__name__}(...) or a dict, not {value!r}")
    wanted = [f for f in kind.__dataclass_fields__]
    known = {spelling: f for f in wanted for spelling in _SPELLINGS[f]}
    args: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise SchemaError(f"{where}: unknown key {key!r} (expected {', '.join(wanted)})")
        args[known[key]] = item
    missing = [f for f in wanted if f != "filter_fields" and f not in args]
    if missing:
        raise SchemaError(f"{where}: missing {', '.join(missing)}")
    return kind(**args)


def _refuse_system_names(fields: Mapping[str, Any], where: str) -> None:
    """Top-level field names starting with '_' belong to the system (`_id`, `_creationTime`)."""
    for key in fields:
        if isinstance(key, str) and key.startswith("_"):
            raise DocumentValidationError(
                f"{where}: field name {key!r} starts with '_'; top-level names starting with '_' "
                "are reserved for system fields"
            )


def stored_name(name: str, info: FieldInfo) -> str:
    """The key a model field is stored under: documents are dumped by alias."""
    return info.serialization_alias or name


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _models_in(arg)


def _check_aliases(model: type[BaseModel], table: str, top: bool, seen: set[type[BaseModel]]) -> None:
    """Refuse fields whose stored key (serialization alias) would not validate again."""
    if model in seen:
        return
    seen.add(model)
    config = model.model_config
    by_name = top or bool(config.get("populate_by_name") or config.get("validate_by_name"))
    for name, info in model.model_fields.items():
        accepted = {name}
        alias = info.validation_alias
        if alias is not None:
            accepted = {name} if by_name else set()
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            accepted.update(c for c in choices if isinstance(c, str))
        stored = stored_name(name, info)
        if stored not in accepted:
            raise SchemaError(
                f"table {table}: field {model.__name__}.{name} would be stored as {stored!r} but "
                f"validated from {sorted(accepted)}; give it a single `alias=` instead"
            )
        for nested in _models_in(info.annotation):
            _check_aliases(nested, table, False, seen)


def may_hold_models(annotation: Any) -> bool:
    """Can a value of this type hold a pydantic model? False for types built of builtins, `Any`
    and `Literal` alone; True for models and for other classes (TypedDicts, dataclasses)."""
    if annotation is Any:
        return False
    if isinstance(annotation, type):
        return annotation.__module__ != "builtins" and not issubclass(annotation, (int, float, str, bytes))
    if get_origin(annotation) is Literal:
        return False
    return any(may_hold_models(arg) for arg in get_args(annotation))


@functools.lru_cache(maxsize=1024)
def _model_fields(model: type[BaseModel]) -> tuple[tuple[str, str, bool], ...]:
    """(name, stored key, may hold a model) of each field of `model`."""
    return tuple(
        (name, stored_name(name, info), may_hold_models(info.annotation))
        for name, info in model.model_fields.items()
    )


def leave_out_unset_nones(value: Any, dumped: Any) -> None:
    """Remove from `dumped` (`value` dumped by alias) each model field the writer did not give
    whose value is None: an optional field left out stays absent, as in Convex (`v.optional`),
    rather than becoming null. Models nested in models, lists and dicts likewise."""
    if isinstance(value, BaseModel):
        if not isinstance(dumped, dict):  # a custom serializer chose another shape
            return
        given = value.model_fields_set
        for name, key, nested in _model_fields(type(value)):
            item = getattr(value, name, None)
            if item is None and name not in given:
                dumped.pop(key, None)
            elif nested and key in dumped:
                leave_out_unset_nones(item, dumped[key])
    elif isinstance(value, (list, tuple)) and isinstance(dumped, list) and len(value) == len(dumped):
        for item, out in zip(value, dumped, strict=True):
            if type(item) not in _SCALARS:
                leave_out_unset_nones(item, out)
    elif isinstance(value, Mapping) and isinstance(dumped, dict):
        for k, item in value.items():
            if type(item) not in _SCALARS and k in dumped:
                leave_out_unset_nones(item, dumped[k])


_SCALARS = frozenset((str, int, float, bool, type(None), bytes))


@dataclass
class Table:
    """A table of documents validated by `model` (None: any object), with named indexes.

    `indexes` maps an index name to its ordered field list; `_creationTime` is appended to every
    index, and `by_creation_time` exists on every table. `search_indexes` and `vector_indexes`
    map names to SearchIndex / VectorIndex (or dicts of their fields); all index names of a table
    are distinct.
    """

    model: type[BaseModel] | None = None
    indexes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    search_indexes: Mapping[str, SearchIndex | Mapping[str, Any]] = field(default_factory=dict)
    vector_indexes: Mapping[str, VectorIndex | Mapping[str, Any]] = field(default_factory=dict)
    name: str = ""
    _strict: type[BaseModel] | None = field(default=None, repr=False)
    _validator: SchemaValidator | None = field(default=None, repr=False)

    def bind(self, name: str, system: bool = False) -> None:
        if system:
            if not (name.startswith("_") and NAME_RE.match(name[1:]) and len(name) <= MAX_NAME_LEN):
                raise SchemaError(
                    f"system table name {name!r} must be '_' followed by a valid name, "
                    f"at most {MAX_NAME_LEN} characters in all"
                )
        elif name.lower().startswith("pg_"):
            raise SchemaError(
                f"table name {name!r} is reserved: PostgreSQL names its system catalogs with the pg_ prefix"
            )
        elif not NAME_RE.match(name):
            raise SchemaError(
                f"table name {name!r} is invalid: use letters, digits and '_', starting with a letter"
            )
        self.name = name
        if self.model is not None:
            if not (isinstance(self.model, type) and issubclass(self.model, BaseModel)):
                raise SchemaError(f"table {name}: model must be a pydantic BaseModel subclass")
            base = self.model
            _check_aliases(base, name, True, set())
            # Stored documents are keyed by alias; accept field names as well on input.
            config = ConfigDict(**{**base.model_config, "extra": "forbid", "populate_by_name": True})
            self._strict = type(f"{base.__name__}Document", (base,), {"model_config": config})
            self._validator, problems = convex_validator(self._strict.__pydantic_core_schema__)
            if problems:
                raise SchemaError(f"table {name}: model {base.__name__}: {'; '.join(problems)}")
        stored_names = (
            {stored_name(n, i): n for n, i in self.model.model_fields.items()}
            if self.model is not None
            else {}
        )
        for key in stored_names:
            if key.startswith("_"):
                raise SchemaError(
                    f"table {name}: field {key!r} starts with '_'; top-level names starting "
                    "with '_' are reserved for system fields"
                )
        for index_name, fields in self.indexes.items():
            self._check_index_name(index_name)
            if isinstance(fields, str) or not fields:
                raise SchemaError(
                    f"table {name}, index {index_name}: give a non-empty list of field names"
                )
            for f in fields:
                self._check_field(f, f"table {name}, index {index_name}", stored_names)
            if len(set(fields)) != len(fields):
                raise SchemaError(f"table {name}, index {index_name}: a field is listed twice")
        self._bind_search_indexes(stored_names)

    def _check_index_name(self, index_name: Any) -> None:
        name = self.name
        if not isinstance(index_name, str) or not NAME_RE.match(index_name):
            raise SchemaError(f"table {name}: index name {index_name!r} is invalid")
        if len(index_name) > MAX_INDEX_NAME_LEN:
            raise SchemaError(
                f"table {name}: index name {index_name!r} is longer than "
                f"{MAX_INDEX_NAME_LEN} characters (its columns k_<name>, s_<name>... must fit "
                f"PostgreSQL's {MAX_NAME_LEN})"
            )
        if index_name in (BY_CREATION_TIME, BY_ID):
            raise SchemaError(f"table {name}: index name {index_name!r} is reserved")

    def _check_field(self, f: Any, where: str, stored_names: Mapping[str, str]) -> None:
        if not isinstance(f, str) or not f or f in SYSTEM_FIELDS or f.startswith("_"):
            raise SchemaError(f"{where}: {f!r} cannot be indexed (system fields are added automatically)")
        top = f.split(".")[0]
        if self.model is not None and top not in stored_names:
            info = self.model.model_fields.get(top)
            hint = f" (it is stored as {stored_name(top, info)!r})" if info else ""
            raise SchemaError(f"{where}: field {top!r} is not in model {self.model.__name__}{hint}")

    def _bind_search_indexes(self, stored_names: Mapping[str, str]) -> None:
        """Normalize and check search_indexes and vector_indexes."""
        name = self.name
        taken = set(self.indexes)
        for kind, declared, limit in (
            (SearchIndex, self.search_indexes, MAX_SEARCH_INDEXES),
            (VectorIndex, self.vector_indexes, MAX_VECTOR_INDEXES),
        ):
            label = "search" if kind is SearchIndex else "vector"
            if not isinstance(declared, Mapping):
                raise SchemaError(f"table {name}: {label}_indexes must be a dict of name -> {kind.__name__}")
            if len(declared) > limit:
                raise SchemaError(f"table {name}: {len(declared)} {label} indexes, over the limit of {limit} per table")
            normalized: dict[str, Any] = {}
            for index_name, value in declared.items():
                self._check_index_name(index_name)
                where = f"table {name}, {label} index {index_name}"
                if index_name in taken:
                    raise SchemaError(f"{where}: the name is already used by another index of the table")
                taken.add(index_name)
                index = _declared(kind, where, value)
                field_name = index.search_field if kind is SearchIndex else index.vector_field
                self._check_field(field_name, where, stored_names)
                filters = index.filter_fields
                if isinstance(filters, str) or not isinstance(filters, Sequence):
                    raise SchemaError(f"{where}: filter_fields must be a list of field names")
                if len(filters) > MAX_FILTER_FIELDS:
                    raise SchemaError(f"{where}: {len(filters)} filter fields, over the limit of {MAX_FILTER_FIELDS}")
                for f in filters:
                    self._check_field(f, where, stored_names)
                if len(set(filters)) != len(filters):
                    raise SchemaError(f"{where}: a filter field is listed twice")
                if field_name in filters:
                    raise SchemaError(f"{where}: {field_name!r} cannot be both the indexed field and a filter field")
                if kind is VectorIndex:
                    dims = index.dimensions
                    if not isinstance(dims, int) or isinstance(dims, bool) or not MIN_DIMENSIONS <= dims <= MAX_DIMENSIONS:
                        raise SchemaError(
                            f"{where}: dimensions must be an integer from {MIN_DIMENSIONS} to {MAX_DIMENSIONS}, not {dims!r}"
                        )
                normalized[index_name] = dataclasses.replace(index, filter_fields=tuple(filters))
            if kind is SearchIndex:
                self.search_indexes = normalized
            else:
                self.vector_indexes = normalized

    def index_fields(self) -> dict[str, list[str]]:
        """Every index of the table with its full field list (ending with `_creationTime`)."""
        out = {BY_CREATION_TIME: [CREATION_TIME]}
        for index_name, fields in self.indexes.items():
            out[index_name] = [*fields, CREATION_TIME]
        return out

    def fingerprint(self) -> str:
        """Changes whenever what a valid document looks like changes."""
        shape: Any = self.model.model_json_schema() if self.model is not None else None
        return hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def validate(
        self, fields: Mapping[str, Any], doc_id: str | None = None, tables: TableNames | None = None
    ) -> dict[str, Any]:
        """Validate user fields (no system fields) and return what is stored. `tables`: the
        deployment's table names by number, to check `Id[...]` fields' tables.

        Raises DocumentValidationError naming the table, the document and the field.
        """
        where = f"table `{self.name}`" + (f", document {doc_id}" if doc_id else "")
        if not isinstance(fields, Mapping):
            raise DocumentValidationError(f"{where}: a document must be an object")
        try:
            fields = drop_unset(fields)
        except ValueValidationError as exc:
            raise DocumentValidationError(f"{where}: {exc}") from exc
        _refuse_system_names(fields, where)
        if self._validator is None:
            try:
                to_convex_json(fields)
            except ValueValidationError as exc:
                raise DocumentValidationError(f"{where}: {exc}") from exc
            return dict(fields)
        try:
            model = self._validator.validate_python(dict(fields), context=context(tables))
        except ValidationError as exc:
            raise DocumentValidationError(
                f"{where} does not match {self.model.__name__ if self.model else 'schema'}: "
                f"{describe_validation_error(exc)}"
            ) from exc
        stored: dict[str, Any] = model.model_dump(mode="python", by_alias=True)
        leave_out_unset_nones(model, stored)
        _refuse_system_names(stored, where)
        try:
            to_convex_json(stored)
        except ValueValidationError as exc:
            raise DocumentValidationError(f"{where}: {exc}") from exc
        return stored


class Schema:
    """`Schema(videos=Table(Video, indexes={"by_status": ["status"]}), ...)`."""

    def __init__(self, **tables: Table) -> None:
        self.tables: dict[str, Table] = {}
        for name, table in tables.items():
            if not isinstance(table, Table):
                raise SchemaError(f"schema entry {name!r} must be a Table(...)")
            if name.startswith("_"):
                raise SchemaError(f"table name {name!r} is reserved: names starting with '_' are system tables")
            table.bind(name)
            self.tables[name] = table

    def __repr__(self) -> str:
        return f"Schema({', '.join(self.tables)})"
