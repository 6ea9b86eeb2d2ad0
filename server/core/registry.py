"""Function decorators and the registry of an app's functions, keyed by Convex path."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import SchemaValidator

from server.core.absent import UNSET, drop_unset
from server.core.schema import leave_out_unset_nones, may_hold_models
from server.core.validation import TableNames, context, convex_validator, describe_validation_error
from server.errors import (
    ArgumentValidationError,
    FunctionNotFound,
    FunctionUnavailable,
    ReturnValidationError,
    RippleUsageError,
    ValueValidationError,
    WrongFunctionKind,
    shown,
)

Kind = Literal["query", "mutation", "action"]
Handler = Callable[..., Any]


class FunctionDef:
    """A registered function: what `@query`, `@mutation`, `@action` (and internal_*) return."""

    def __init__(
        self,
        handler: Handler,
        kind: Kind,
        internal: bool,
        args: type[BaseModel] | None = None,
        returns: Any = None,
    ) -> None:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"{handler.__qualname__}: Ripple functions must be `async def`")
        self.handler = handler
        self.kind: Kind = kind
        self.internal = internal
        self.path: str | None = None
        self.explicit_args = args is not None
        self.args_model = args if args is not None else _model_from_signature(handler)
        self.returns: TypeAdapter[Any] | None = TypeAdapter(returns) if returns is not None else None
        self.returns_models = may_hold_models(returns)
        # Convex's rules (server/core/validation.py); an invalid default fails the import.
        self._args, problems = convex_validator(self.args_model.__pydantic_core_schema__)
        self._returns: SchemaValidator | None = None
        if self.returns is not None:
            self._returns, returns_problems = convex_validator(self.returns.core_schema)
            problems += [f"returns: {p}" for p in returns_problems]
        if problems:
            raise TypeError(f"{handler.__qualname__}: {'; '.join(problems)}")
        # The deployment's table names by number, for `Id[...]` (Registry.bind_tables).
        self.tables: TableNames | None = None
        self.__doc__ = handler.__doc__
        self.__name__ = handler.__name__
        self.__module__ = handler.__module__
        self.__wrapped__ = handler

    def __repr__(self) -> str:
        vis = "internal " if self.internal else ""
        return f"<{vis}{self.kind} {self.path or self.handler.__qualname__}>"

    def validate_args(self, args: Any) -> dict[str, Any]:
        if not isinstance(args, Mapping):
            raise ArgumentValidationError(
                f"arguments to {self.path} must be an object, not {type(args).__name__}"
            )
        try:  # an UNSET argument is one not given; deeper UNSETs are left out when encoded
            model = self._args.validate_python({k: v for k, v in args.items() if v is not UNSET},
                                               context=context(self.tables))
        except ValidationError as exc:
            raise ArgumentValidationError(
                f"invalid arguments for {self.path}: {describe_validation_error(exc)}"
            ) from exc
        except Exception:
            raise
        except BaseException as exc:  # a validator of the app's own model raised SystemExit...
            raise ArgumentValidationError(
                f"invalid arguments for {self.path}: a validator raised {type(exc).__name__}"
            ) from exc
        if self.explicit_args:
            return {"args": model}
        return {name: getattr(model, name) for name in type(model).model_fields}

    def validate_return(self, value: Any) -> Any:
        """The value checked against `returns=` and dumped back to plain Python, so that models,
        dataclasses and TypedDicts of models reach the client as Convex objects. UNSET by itself
        is null, as JavaScript's `undefined` result is; UNSET fields are absent (values.py)."""
        if value is UNSET:
            value = None
        if self.returns is None or self._returns is None:
            return value
        try:
            validated = self._returns.validate_python(drop_unset(value), context=context(self.tables))
        except ValueValidationError as exc:
            raise ReturnValidationError(f"{self.path} returned a value that is not a Convex value: {exc}") from exc
        except ValidationError as exc:
            raise ReturnValidationError(
                f"{self.path} returned a value that does not match its declared type: "
                f"{describe_validation_error(exc)}"
            ) from exc
        dumped = self.returns.dump_python(validated, mode="python", by_alias=True)
        if self.returns_models:
            leave_out_unset_nones(validated, dumped)
        return dumped


def _model_from_signature(handler: Handler) -> type[BaseModel]:
    sig = inspect.signature(handler)
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(f"{handler.__qualname__}: the first parameter must be the context (ctx)")
    hints = inspect.get_annotations(handler, eval_str=True)
    fields: dict[str, Any] = {}
    for p in params[1:]:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"{handler.__qualname__}: *args/**kwargs are not supported; name each argument")
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"{handler.__qualname__}: argument {p.name} must not be positional-only")
        annotation = hints.get(p.name, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (annotation, default)
    return create_model(
        f"{handler.__name__}_args",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
        **fields,
    )


def _decorator(kind: Kind, internal: bool) -> Any:
    @overload
    def deco(handler: Handler, /) -> FunctionDef: ...

    @overload
    def deco(*, args: type[BaseModel] | None = None, returns: Any = None) -> Callable[[Handler], FunctionDef]: ...

    def deco(
        handler: Handler | None = None, /, *, args: type[BaseModel] | None = None, returns: Any = None
    ) -> Any:
        if handler is not None:
            return FunctionDef(handler, kind, internal)
        return lambda h: FunctionDef(h, kind, internal, args=args, returns=returns)

    return deco


query = _decorator("query", False)
mutation = _decorator("mutation", False)
action = _decorator("action", False)
internal_query = _decorator("query", True)
internal_mutation = _decorator("mutation", True)
internal_action = _decorator("action", True)


MAX_PATH_CHARS = 1024
SYSTEM_PREFIX = "_system/"  # Ripple's own functions (server/core/dashboard.py)


def canonical_path(path: object) -> str:
    """`videos` -> `videos:default`; `dir/mod.js:fn` -> `dir/mod:fn`. Raises on malformed paths;
    error messages show at most the first 200 characters of a path (errors.shown)."""
    if not isinstance(path, str) or not path:
        raise RippleUsageError(f"function path must be a non-empty string, not {shown(repr(path))}")
    if len(path) > MAX_PATH_CHARS:
        raise RippleUsageError(
            f"function path {shown(path)!r} is longer than the limit of {MAX_PATH_CHARS} characters"
        )
    module, sep, name = path.partition(":")
    if not sep:
        name = "default"
    if module.endswith(".js"):
        module = module[:-3]
    parts = module.split("/")
    if not all(part.isidentifier() for part in parts) or not name.isidentifier():
        raise RippleUsageError(
            f"malformed function path {shown(path)!r}: expected 'module:function' or 'folder/module:function'"
        )
    return f"{module}:{name}"


class Registry:
    """The loaded functions of one app version."""

    def __init__(self) -> None:
        self.functions: dict[str, FunctionDef] = {}
        # Modules left out of a partial load: Convex module path -> why ("functions/x.py failed
        # to load: ..."). Their functions are absent; calling one says so.
        self.unavailable: dict[str, str] = {}

    @property
    def app_function_count(self) -> int:
        """The app's own functions, without Ripple's `_system/` ones (app modules never start
        with `_`, so the prefix is Ripple's alone)."""
        return sum(1 for path in self.functions if not path.startswith(SYSTEM_PREFIX))

    def bind_tables(self, tables: TableNames) -> None:
        """Give every function the deployment's table names by number, once the schema is
        applied, so that `Id["t"]` arguments and returns are checked to belong to table t."""
        for fn in self.functions.values():
            fn.tables = tables

    def add(self, path: str, fn: FunctionDef) -> None:
        """Register `fn` at `path`. A function exported under several names (`alias = fn`) is
        callable at each of them; `fn.path` stays the first (canonical) one."""
        if path in self.functions and self.functions[path] is not fn:
            raise RippleUsageError(f"two functions registered at {path}")
        if fn.path is None:
            fn.path = path
        self.functions[path] = fn

    def resolve(self, path: object, *, allow_internal: bool = False, kind: Kind | None = None) -> FunctionDef:
        canonical = canonical_path(path)
        fn = self.functions.get(canonical)
        if fn is None and (module := canonical.partition(":")[0]) in self.unavailable:
            raise FunctionUnavailable(f"Function '{shown(canonical)}' is unavailable: {self.unavailable[module]}")
        if fn is None or (fn.internal and not allow_internal):
            close = difflib.get_close_matches(
                canonical, [p for p, f in self.functions.items() if allow_internal or not f.internal], n=1
            )
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise FunctionNotFound(f"Could not find public function for '{shown(canonical)}'.{hint}")
        if kind is not None and fn.kind != kind:
            raise WrongFunctionKind(
                f"'{canonical}' is a {fn.kind}, not a {kind}; call it as a {fn.kind}"
            )
        return fn

    def path_of(self, ref: FunctionDef | str) -> str:
        """A function reference (the decorated object) or a path string -> canonical path."""
        if isinstance(ref, FunctionDef):
            if ref.path is None:
                raise RippleUsageError(f"{ref!r} is not registered (is its module under functions/?)")
            return ref.path
        return canonical_path(ref)
