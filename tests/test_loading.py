"""Importing an app: errors name the user's file and line; a partial load serves what imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.core.loader import load_app
from server.errors import AppLoadError, FunctionNotFound, FunctionUnavailable

GOOD = "from server import query\n\n\n@query\nasync def hi(ctx) -> str:\n    return 'hi'\n"


def make_app(root: Path, files: dict[str, str]) -> Path:
    for name, source in {"schema.py": "from server import Schema\nschema = Schema()\n", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


@pytest.mark.parametrize(("source", "expected"), [
    ("from server import query\n\nx = foo\n", "functions/bad.py:3: NameError: name 'foo' is not defined"),
    ("def oops(:\n    pass\n", "functions/bad.py:1: SyntaxError: invalid syntax"),
    ("from server import query\n\n\n@query\ndef plain(ctx):\n    return 1\n",
     "functions/bad.py:4: TypeError: plain: Ripple functions must be `async def`"),
    ("import functions._helper\n", "functions/_helper.py:2: RuntimeError: helper broke"),
    ("import no_such_module_here\n", "functions/bad.py:1: ModuleNotFoundError: No module named 'no_such_module_here'"),
])
def test_an_import_error_names_the_app_file_and_line(tmp_path: Path, source: str, expected: str) -> None:
    app = make_app(tmp_path, {
        "functions/good.py": GOOD,
        "functions/bad.py": source,
        "functions/_helper.py": "x = 1\nraise RuntimeError('helper broke')\n",
    })
    with pytest.raises(AppLoadError) as err:
        load_app(app)
    assert str(err.value) == expected

    partial = load_app(app, partial=True)
    assert partial.load_errors == {"functions/bad.py": expected}
    assert list(partial.registry.functions) == ["good:hi"]


def test_a_schema_error_names_schema_py(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"schema.py": "from server import Schema, Table\n\nschema = Schema(t=Table(indexes={'by_x': []}))\n",
                              "functions/good.py": GOOD})
    with pytest.raises(AppLoadError, match=r"^schema\.py:3: SchemaError: table t, index by_x: give a non-empty list"):
        load_app(app, partial=True)  # nothing can be served without the schema, even partially


def test_frames_in_a_virtualenv_inside_the_app_are_not_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    (site / "fragile_dep.py").write_text("raise ValueError('inside a dependency')\n")
    monkeypatch.syspath_prepend(str(site))
    app = make_app(tmp_path, {"functions/uses.py": "\nimport fragile_dep\n"})
    with pytest.raises(AppLoadError) as err:
        load_app(app)
    assert str(err.value) == "functions/uses.py:2: ValueError: inside a dependency"


def test_calling_a_function_of_a_module_that_failed_says_why(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"functions/good.py": GOOD, "functions/sub/bad.py": "x = foo\n"})
    registry = load_app(app, partial=True).registry
    with pytest.raises(FunctionUnavailable) as err:
        registry.resolve("sub/bad:anything")
    assert str(err.value) == ("Function 'sub/bad:anything' is unavailable: functions/sub/bad.py failed to load: "
                              "functions/sub/bad.py:1: NameError: name 'foo' is not defined")
    with pytest.raises(FunctionNotFound) as not_found:
        registry.resolve("good:nope")
    assert not isinstance(not_found.value, FunctionUnavailable)
