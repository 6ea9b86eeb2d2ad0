"""The application schema: tables of pydantic-validated documents with named indexes."""

from __future__ import annotations

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
    index, and `by_creation_time` exists on every table.
    """

    model: type[BaseModel] | None = None
    indexes: Mapping[str, Sequence[str]] = field(default_factory=dict)
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
            if not isinstance(index_name, str) or not NAME_RE.match(index_name):
                raise SchemaError(f"table {name}: index name {index_name!r} is invalid")
            if len(index_name) > MAX_INDEX_NAME_LEN:
                raise SchemaError(
                    f"table {name}: index name {index_name!r} is longer than "
                    f"{MAX_INDEX_NAME_LEN} characters (its key column k_<name> must fit "
                    f"PostgreSQL's {MAX_NAME_LEN})"
                )
            if index_name in (BY_CREATION_TIME, BY_ID):
                raise SchemaError(f"table {name}: index name {index_name!r} is reserved")
            if isinstance(fields, str) or not fields:
                raise SchemaError(
                    f"table {name}, index {index_name}: give a non-empty list of field names"
                )
            for f in fields:
                if not isinstance(f, str) or f in SYSTEM_FIELDS or f.startswith("_"):
                    raise SchemaError(
                        f"table {name}, index {index_name}: {f!r} cannot be indexed "
                        "(system fields are added automatically)"
                    )
                top = f.split(".")[0]
                if self.model is not None and top not in stored_names:
                    info = self.model.model_fields.get(top)
                    hint = f" (it is stored as {stored_name(top, info)!r})" if info else ""
                    raise SchemaError(
                        f"table {name}, index {index_name}: field {top!r} is not in model "
                        f"{self.model.__name__}{hint}"
                    )
            if len(set(fields)) != len(fields):
                raise SchemaError(f"table {name}, index {index_name}: a field is listed twice")

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
