"""The shape of server/: layers with one import direction, no import cycles, modules of a
readable size, and a public API that loads no driver. See docs/internals.md (Layers)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

from conftest import ROOT

SERVER = ROOT / "server"
MAX_LINES = 400
REASON = "Longer than 400 lines because"


def test_layer_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout


def test_every_core_module_has_a_layer() -> None:
    """A module missing from the core contract would be unconstrained: list every one."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (core,) = [c for c in contracts if c.get("containers") == ["server.core"]]
    listed = {name.strip() for layer in core["layers"] for name in layer.replace(":", "|").split("|")}
    core_dir = SERVER / "core"
    modules = {
        ".".join(p.relative_to(core_dir).with_suffix("").parts)
        for p in core_dir.rglob("*.py") if p.name != "__init__.py"
    }
    assert modules - listed == set(), "add these modules to a layer in pyproject.toml"
    assert listed - modules == set(), "these layers name no module"


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_of_server_has_no_cycle() -> None:
    """Imports under TYPE_CHECKING count: a cycle through annotations is still a cycle."""
    graph = grimp.build_graph("server", cache_dir=None)
    modules = set(graph.modules)
    assert len(modules) > 30
    assert _cycles(graph, modules) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c", "d"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert _cycles(graph, {"a", "b", "c", "d"}) == [["a", "b", "c"]]


def test_no_module_is_long_without_a_reason_at_its_top() -> None:
    long = []
    for path in sorted([*SERVER.rglob("*.py"), *(ROOT / "client_sdk").rglob("*.py")]):
        text = path.read_text()
        if text.count("\n") > MAX_LINES and REASON not in "\n".join(text.splitlines()[:40]):
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert long == [], f"split these modules, or say at their top why not ('{REASON} ...')"


def test_importing_the_public_api_loads_no_driver_and_no_server() -> None:
    code = (
        "import sys, server\n"
        "from server import *\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('asyncpg', 'starlette', 'uvicorn', 'websockets')"
        " or m in ('server.core.runtime', 'server.core.database', 'server.api', 'server.runner'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
