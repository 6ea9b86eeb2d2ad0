"""Import an app directory: `schema.py` and every module under `functions/`."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from server.core.http_router import HTTP_MODULE, HttpRouter, app_router
from server.core.registry import FunctionDef, Registry
from server.core.schema import Schema
from server.errors import AppLoadError, SchemaError, user_frames

FUNCTIONS_PACKAGE = "functions"
_loaded_dir: str | None = None


@dataclass
class App:
    directory: Path
    schema: Schema
    registry: Registry
    modules: dict[str, ModuleType]
    # Function modules that failed to import (a partial load), by file relative to the app
    # directory: "functions/videos.py" -> "functions/videos.py:12: NameError: ...".
    load_errors: dict[str, str] = field(default_factory=dict)
    http: HttpRouter | None = None  # the routes of functions/http.py (HTTP actions), if it loaded


def _forget_app_modules() -> None:
    for name in list(sys.modules):
        if name == "schema" or name == FUNCTIONS_PACKAGE or name.startswith(FUNCTIONS_PACKAGE + "."):
            del sys.modules[name]


def module_paths(directory: Path) -> list[tuple[str, str]]:
    """(Convex module path, Python module name) for each function file, in a stable order."""
    root = directory / FUNCTIONS_PACKAGE
    out = []
    for file in sorted(root.rglob("*.py")):
        rel = file.relative_to(root).with_suffix("")
        parts = rel.parts
        if any(p.startswith("_") or not p.isidentifier() for p in parts):
            continue  # __init__.py, _private helpers, odd names
        out.append(("/".join(parts), ".".join((FUNCTIONS_PACKAGE, *parts))))
    return out


def describe_import_error(exc: BaseException, directory: Path) -> str:
    """One line naming where in the app an import failed and why:
    `functions/videos.py:12: NameError: name 'foo' is not defined`. The place is the innermost
    frame in the app's own code (a decorator raising points at the decorated line); for a
    SyntaxError, the offending line."""
    where = None
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{_app_relative(exc.filename, directory)}:{exc.lineno}"
        text = f"{type(exc).__name__}: {exc.msg}"
    else:
        frames = user_frames(exc, directory)
        if frames:
            where = f"{_app_relative(frames[-1].filename, directory)}:{frames[-1].lineno}"
        detail = str(exc)
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return f"{where}: {text}" if where else text


def _app_relative(filename: str, directory: Path) -> str:
    path = Path(filename).resolve()
    return path.relative_to(directory).as_posix() if path.is_relative_to(directory) else filename


def _import(module_name: str, directory: Path) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(describe_import_error(exc, directory)) from exc


def load_app(directory: Path, *, partial: bool = False) -> App:
    """Import (or re-import) the app. An import error raises AppLoadError naming the file and
    line. With `partial`, a function module that fails to import is left out and its error kept
    in `App.load_errors` (the registry answers calls to it with that error); `schema.py`
    failing still raises."""
    global _loaded_dir
    directory = directory.resolve()
    for stale in {_loaded_dir, str(directory)}:
        while stale is not None and stale in sys.path:
            sys.path.remove(stale)
    sys.path.insert(0, str(directory))  # the app's `schema` and `functions` win over any other
    _loaded_dir = str(directory)
    _forget_app_modules()
    importlib.invalidate_caches()

    schema = Schema()
    if (directory / "schema.py").exists():
        module = _import("schema", directory)
        schema = getattr(module, "schema", None)  # type: ignore[assignment]
        if not isinstance(schema, Schema):
            raise SchemaError("schema.py must define `schema = Schema(...)`")

    registry = Registry()
    modules: dict[str, ModuleType] = {}
    load_errors: dict[str, str] = {}
    http: HttpRouter | None = None
    for convex_path, module_name in module_paths(directory):
        try:
            module = _import(module_name, directory)
            if convex_path == HTTP_MODULE:
                http = app_router(module)
        except AppLoadError as exc:
            if not partial:
                raise
            file = f"{FUNCTIONS_PACKAGE}/{convex_path}.py"
            load_errors[file] = str(exc)
            registry.unavailable[convex_path] = f"{file} failed to load: {exc}"
            continue
        modules[convex_path] = module
        for attr, value in vars(module).items():
            if isinstance(value, FunctionDef) and value.handler.__module__ == module_name:
                registry.add(f"{convex_path}:{attr}", value)
    return App(directory=directory, schema=schema, registry=registry, modules=modules, load_errors=load_errors, http=http)
