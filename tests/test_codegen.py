"""`ripple codegen`: the generated `api` types a TypeScript frontend that uses the official
`convex/react`, as the TypeScript compiler (npm `typescript` in tests/js) judges it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import APPS, ROOT, ServerProcess

NODE_MODULES = ROOT / "tests" / "js" / "node_modules"
TSC = NODE_MODULES / ".bin" / "tsc"
TSCONFIG = {
    "compilerOptions": {
        "target": "es2022", "module": "esnext", "moduleResolution": "bundler", "strict": True,
        "noEmit": True, "skipLibCheck": True, "types": [], "jsx": "react-jsx",
    },
    "include": ["*.ts", "*.tsx", "_generated/*.d.ts"],
}


def codegen(app: Path, out: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "server.cli", "codegen", "--dir", str(app), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.fixture
def frontend(tmp_path: Path) -> Path:
    """A directory for a small TypeScript frontend, resolving packages from tests/js."""
    if not (NODE_MODULES / "typescript" / "package.json").is_file():
        pytest.fail("tests/js/node_modules lacks typescript: run `npm ci --prefix tests/js`")
    (tmp_path / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    (tmp_path / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    return tmp_path


def position(source: str, needle: str) -> str:
    """Where tsc reports an error at the first `needle` of `source`: `page.tsx(line,column)`."""
    before = source[: source.index(needle)]
    return f"page.tsx({before.count(chr(10)) + 1},{len(before) - before.rfind(chr(10))})"


def tsc(project: Path, source: str) -> subprocess.CompletedProcess[str]:
    (project / "page.tsx").write_text(source)
    return subprocess.run([str(TSC), "-p", str(project / "tsconfig.json"), "--pretty", "false"],
                          cwd=project, capture_output=True, text=True, timeout=120)


TYPED_PAGE = """
import { useMutation, useQuery } from "convex/react";
import { api } from "./_generated/api";
import type { Doc, Id } from "./_generated/dataModel";

export function Numbers({ owner }: { owner: Id<"users"> }) {
  const shown: string[] | undefined = useQuery(api.typed.numbers, ARGS);
  const titles: string[] | undefined = useQuery(api.typed.by_owner, { owner });
  const video: Doc<"videos"> | null = null;
  const views: number | undefined = video === null ? undefined : (video as Doc<"videos">).views;
  const addVideo = useMutation(api.typed.add_video);
  void addVideo({ owner, title: "t" });
  return <p>{shown?.join(",")} {titles?.length} {views}</p>;
}
"""


def test_typed_app_compiles_and_wrong_arguments_do_not(frontend: Path) -> None:
    said = codegen(APPS / "typed", frontend / "_generated")
    assert "wrote api.js, api.d.ts, dataModel.d.ts" in said
    good = tsc(frontend, TYPED_PAGE.replace("ARGS", '{ n: 1, x: 2.5, counts: { a: 1 }, flags: null }'))
    assert good.returncode == 0, good.stdout + good.stderr

    # TypeScript reports a property of the wrong type at the property's name
    page = TYPED_PAGE.replace("ARGS", '{ n: "1", x: 2.5 }')
    wrong_type = tsc(frontend, page)
    assert wrong_type.returncode != 0
    expected = position(page, 'n: "1"') + ": error TS2322: Type 'string' is not assignable to type 'number'"
    assert expected in wrong_type.stdout, wrong_type.stdout

    missing = tsc(frontend, TYPED_PAGE.replace("ARGS", "{ x: 2.5 }"))
    assert missing.returncode != 0
    assert "Property 'n' is missing" in missing.stdout, missing.stdout

    # an id of another table: Id<"videos"> is not an Id<"users">
    page = TYPED_PAGE.replace("ARGS", "{ n: 1, x: 2 }").replace('Id<"users">', 'Id<"videos">')
    wrong_table = tsc(frontend, page)
    assert wrong_table.returncode != 0
    expected = position(page, "owner })") + """: error TS2322: Type 'Id<"videos">' is not assignable to type 'Id<"users">'"""
    assert expected in wrong_table.stdout, wrong_table.stdout

    assert "nothing changed" in codegen(APPS / "typed", frontend / "_generated")


EXAMPLE_PAGE = """
import { useMutation, usePaginatedQuery, useQuery } from "convex/react";
import { api } from "./_generated/api";
import type { Doc } from "./_generated/dataModel";

export function Campaigns() {
  const { results, loadMore } = usePaginatedQuery(api.videos.listMine, { status: "approved" }, { initialNumItems: 5 });
  const campaigns = useQuery(api.campaigns.list, STATUS);
  const create = useMutation(api.campaigns.create);
  const status: Doc<"videos">["status"] = "approved";
  const me = useQuery(api.users.me);
  void create({ name: "Summer", brand: "Acme" });
  return <p onClick={() => loadMore(5)}>{campaigns?.length} {status} {me === undefined} {results.length}</p>;
}
"""


def test_example_app_compiles_and_a_wrong_literal_does_not(frontend: Path) -> None:
    codegen(ROOT, frontend / "_generated")
    good = tsc(frontend, EXAMPLE_PAGE.replace("STATUS", '{ status: "active" }'))
    assert good.returncode == 0, good.stdout + good.stderr
    page = EXAMPLE_PAGE.replace("STATUS", '{ status: "archived" }')
    wrong = tsc(frontend, page)
    assert wrong.returncode != 0
    expected = position(page, 'status: "archived"') + """: error TS2322: Type '"archived"'"""
    assert expected in wrong.stdout, wrong.stdout


MAPPING_APP = """
import enum
from dataclasses import dataclass
from typing import Any, Literal

from typing_extensions import TypedDict

from pydantic import BaseModel, Field

from server import Id, Int64, Schema, Table, internal_query, mutation, query

class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"

class Point(TypedDict):
    x: float
    label: str | None

@dataclass
class Box:
    corner: Point
    size: Int64

class Note(BaseModel):
    body: str = Field(alias="text")
    color: Color = Color.RED
    parent: Id["notes"] | None = None

schema = Schema(notes=Table(Note, indexes={"by_color": ["color"]}))

@query
async def everything(ctx, s: str, i: int, f: float, big: Int64, b: bool, raw: bytes, xs: list[int],
                     pair: tuple[str, int], counts: dict[str, float], maybe: str | None, kind: Literal["a", "b"],
                     color: Color, box: Box, note: Note, anything: Any, opt: int = 3) -> tuple[Box, None]:
    return (box, None)

@mutation(returns=Note)
async def make(ctx) -> Note:
    return Note(body="x")

@internal_query
async def hidden(ctx, id: Id["notes"]) -> None:
    return None
"""


def test_python_types_map_to_typescript(frontend: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    schema, functions = MAPPING_APP.split("@query", 1)
    (app / "schema.py").write_text(schema)
    (app / "functions" / "kinds.py").write_text(schema.replace("schema = Schema", "_schema = Schema") + "@query" + functions)
    codegen(app, frontend / "_generated")
    api = " ".join((frontend / "_generated" / "api.d.ts").read_text().split())
    for expected in ['s: string;', 'i: number;', 'f: number;', 'big: bigint;', 'b: boolean;', 'raw: ArrayBuffer;',
                     'xs: Array<number>;', 'pair: [string, number];', 'counts: Record<string, number>;',
                     'maybe: string | null;', 'kind: "a" | "b";', 'color: "red" | "blue";',
                     'box: { corner: { x: number; label: string | null; }; size: bigint; };',
                     'anything: any;', 'opt?: number;', 'parent?: Id<"notes"> | null;',
                     ', [{ corner: { x: number; label: string | null; }; size: bigint; }, null]>',
                     'make: FunctionReference<"mutation", "public", Record<string, never>, { text: string; color: "red" | "blue";',
                     'internal: { kinds: { hidden: FunctionReference<"query", "internal", { id: Id<"notes">; }, null>;']:
        assert expected in api, (expected, api)
    model = " ".join((frontend / "_generated" / "dataModel.d.ts").read_text().split())
    assert ('document: { text: string; color: "red" | "blue"; parent?: Id<"notes"> | null; '
            '_id: Id<"notes">; _creationTime: number; };') in model, model
    assert 'by_color: ["color", "_creationTime"];' in model
    page = """
import { useQuery } from "convex/react";
import { api } from "./_generated/api";
export function Page() {
  const made = useQuery(api.kinds.everything, { s: "", i: 1, f: 1.5, big: 2n, b: true, raw: new ArrayBuffer(1), xs: [],
    pair: ["a", 1], counts: {}, maybe: null, kind: "a", color: "red", anything: 1,
    box: { corner: { x: 1, label: null }, size: 3n }, note: { text: "b" } });
  return <p>{made?.[0].size.toString()}</p>;
}
"""
    result = tsc(frontend, page)
    assert result.returncode == 0, result.stdout + result.stderr


def test_codegen_of_a_directory_without_an_app_says_so(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "server.cli", "codegen", "--dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "has no schema.py or functions/" in result.stderr


@pytest.mark.e2e
def test_dev_codegen_regenerates_after_a_reload(start_server: object, tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "typed", app)
    server: ServerProcess = start_server("dev", app_dir=app, args=["--codegen"])  # type: ignore[operator]
    api = app / "_generated" / "api.d.ts"
    assert "add_user" in api.read_text()  # written at start, before the server is healthy
    source = "from server import query\n\n\n@query\nasync def hi(ctx, who: str) -> str:\n    return who\n"
    deadline = time.monotonic() + 30
    while "hi: FunctionReference" not in api.read_text():
        assert time.monotonic() < deadline, server.log()[-3000:]
        (app / "functions" / "hello.py").write_text(source)  # (re)written: the watcher may start late
        time.sleep(0.3)
    assert "who: string;" in api.read_text()
