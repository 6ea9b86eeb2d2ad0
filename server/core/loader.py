"""Import an app directory: `schema.py` and every module under `functions/`."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from server.core.registry import FunctionDef, Registry
from server.core.schema import Schema
from server.errors import SchemaError

FUNCTIONS_PACKAGE = "functions"
_loaded_dir: str | None = None


@dataclass
class App:
    directory: Path
    schema: Schema
    registry: Registry
    modules: dict[str, ModuleType]


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


def load_app(directory: Path) -> App:
    """Import (or re-import) the app. Errors in user modules propagate with their traceback."""
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
        module = importlib.import_module("schema")
        schema = getattr(module, "schema", None)  # type: ignore[assignment]
        if not isinstance(schema, Schema):
            raise SchemaError(f"{directory / 'schema.py'} must define `schema = Schema(...)`")

    registry = Registry()
    modules: dict[str, ModuleType] = {}
    for convex_path, module_name in module_paths(directory):
        module = importlib.import_module(module_name)
        modules[convex_path] = module
        for attr, value in vars(module).items():
            if isinstance(value, FunctionDef) and value.handler.__module__ == module_name:
                registry.add(f"{convex_path}:{attr}", value)
    return App(directory=directory, schema=schema, registry=registry, modules=modules)
