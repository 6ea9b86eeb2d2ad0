"""`ripple export` / `ripple import` end to end: real `ripple serve` processes over a real
PostgreSQL, the CLI as a subprocess, snapshots in Convex's ZIP layout (docs/import-export.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import APPS, ROOT, ServerProcess, drop_schemas

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]
APP = APPS / "portable"
KEY = "k-" + secrets.token_hex(16)


@pytest.fixture
def serve(start_server: StartServer, pg_url: str, tmp_path: Path) -> Iterator[Callable[[], ServerProcess]]:
    """Start servers of the app, each on a schema and a storage directory of its own."""
    schemas: list[str] = []

    def start() -> ServerProcess:
        name = "t_" + secrets.token_hex(6)
        schemas.append(name)
        env = {"RIPPLE_ADMIN_KEY": KEY, "RIPPLE_STORAGE_DIR": str(tmp_path / name)}
        return start_server("serve", app_dir=APP, extra_env=env, schema=name)

    yield start
    drop_schemas(pg_url, *schemas)


def ripple(server: ServerProcess, *args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
    environment.update(PYTHONPATH=str(ROOT), RIPPLE_ADMIN_KEY=key, RIPPLE_URL=server.url)
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=str(ROOT), env=environment,
                          capture_output=True, text=True, timeout=60)


def call(server: ServerProcess, kind: str, path: str, **args: Any) -> Any:
    import httpx

    body = httpx.post(f"{server.url}/api/{kind}", json={"path": f"data:{path}", "args": args}, timeout=30).json()
    assert body["status"] == "success", body
    return body["value"]


def fill(server: ServerProcess) -> None:
    ada = call(server, "mutation", "add_author", name="Ada", age=36)
    bob = call(server, "mutation", "add_author", name="Bob", age=41)
    file = call(server, "action", "store", text="hello, file")
    call(server, "mutation", "add_post", author=ada, title="Notes", file=file)
    call(server, "mutation", "add_post", author=bob, title="Letters")


def test_export_then_import_into_an_empty_database_gives_identical_documents_and_files(
        serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    source, target = serve(), serve()
    fill(source)
    path = tmp_path / "snapshot.zip"
    refused = ripple(source, "export", "--path", str(path), key="k-wrong")
    assert refused.returncode == 1 and "401" in refused.stderr and not path.exists()
    exported = ripple(source, "export", "--path", str(path))
    assert exported.returncode == 0, exported.stderr
    names = zipfile.ZipFile(path).namelist()
    assert {"_tables/documents.jsonl", "authors/documents.jsonl", "posts/documents.jsonl",
            "_storage/documents.jsonl"} <= set(names)
    with zipfile.ZipFile(path) as archive:  # Convex's uniform encoding: int64 an integer, float64 a fraction
        assert archive.read("posts/generated_schema.jsonl") == b'"uniform"\n'
        posts = [json.loads(line) for line in archive.read("posts/documents.jsonl").splitlines()]
        assert sorted(p["likes"] for p in posts) == [5, 7] and all(type(p["likes"]) is int for p in posts)
        assert b'"age":36.0' in archive.read("authors/documents.jsonl")

    imported = ripple(target, "import", str(path))
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 documents into authors" in imported.stderr
    before, after = call(source, "query", "dump"), call(target, "query", "dump")
    assert after == before  # ids, creation times, fields, file metadata
    assert len(after["files"]) == 1
    assert call(target, "action", "read", id=after["files"][0]["_id"]) == "hello, file"
    assert call(target, "query", "author_named", name="Bob") == before["authors"][1]  # index keys written

    appended = ripple(target, "import", "--append", str(path))  # the same ids again
    assert appended.returncode == 1 and "already has a document" in appended.stderr, appended.stderr
    assert call(target, "action", "read", id=after["files"][0]["_id"]) == "hello, file"  # its bytes untouched
    assert call(target, "query", "dump") == before

    again = ripple(target, "import", str(path))  # the tables hold documents now
    assert again.returncode == 1 and "already has documents" in again.stderr
    replaced = ripple(target, "import", "--replace", str(path))
    assert replaced.returncode == 0, replaced.stderr
    after = call(target, "query", "dump")
    assert after["authors"] == before["authors"]
    # Replacing, a file gets a new id (its old bytes go after the commit); references follow it.
    new_file = after["files"][0]["_id"]
    assert new_file != before["files"][0]["_id"]
    assert after["posts"] == [{**p, "file": new_file} if "file" in p else p for p in before["posts"]]
    assert call(target, "action", "read", id=new_file) == "hello, file"


def _convex_zip(path: Path, posts: list[dict[str, Any]]) -> None:
    """A snapshot as Convex's export writes it: README, _tables, per table documents.jsonl and
    generated_schema.jsonl, _storage metadata plus bytes named by the file's id (and an extension)."""
    blob = b"bytes from convex"
    lines = {
        "_tables/documents.jsonl": [{"name": "authors", "id": 10001}, {"name": "posts", "id": 10002}],
        "authors/documents.jsonl": [
            {"_id": "j57f3kqb1tqgkyrq1fwp3h0a2h6zz9a8", "_creationTime": 1712345678901.123, "name": "Ada", "age": 36.0},
            {"_id": "j57b2z9vbx6p4jqsn9h1qm0g6n6zyz1c", "_creationTime": 1712345679000.5, "name": "Bob", "age": 41.5},
        ],
        "posts/documents.jsonl": posts,
        "_storage/documents.jsonl": [{
            "_id": "kg2c3hb6x5p1jb3f2d8xzqsbk96zzab9", "_creationTime": 1712345670000.25,
            "sha256": base64.b64encode(hashlib.sha256(blob).digest()).decode(), "size": len(blob),
            "contentType": "text/plain", "internalId": "0b6ea86e-3c43-4d6a-a5fa-1f6e3a7b1d2c",
        }],
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.md", "# Welcome to your Convex snapshot export!\n")
        for name, docs in lines.items():
            archive.writestr(name, "".join(json.dumps(d) + "\n" for d in docs))
        for table in ("authors", "posts"):
            archive.writestr(f"{table}/generated_schema.jsonl", json.dumps("uniform") + "\n")
        archive.writestr("_storage/kg2c3hb6x5p1jb3f2d8xzqsbk96zzab9.txt", blob)


def test_a_snapshot_in_convex_format_imports_with_references_rewritten(
        serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    target = serve()
    path = tmp_path / "convex.zip"
    _convex_zip(path, [{"_id": "jd7ad0kzt3bn8s4gq1a9k0p7c16zz3xw", "_creationTime": 1712345680000.0,
                        "author": "j57f3kqb1tqgkyrq1fwp3h0a2h6zz9a8", "title": "Notes",
                        "likes": 5, "data": {"$bytes": base64.b64encode(b"raw").decode()},
                        "file": "kg2c3hb6x5p1jb3f2d8xzqsbk96zzab9"}])
    imported = ripple(target, "import", str(path))
    assert imported.returncode == 0, imported.stderr
    dump = call(target, "query", "dump")
    ada = call(target, "query", "author_named", name="Ada")
    assert ada["_creationTime"] == 1712345678901.123 and ada["age"] == 36
    (post,) = dump["posts"]
    (file,) = dump["files"]
    assert post["author"] == ada["_id"] and post["file"] == file["_id"]  # Convex ids mapped to Ripple ids
    assert post["_creationTime"] == 1712345680000.0 and post["likes"] == "5"  # an int64 (a float reads 5.0)
    assert post["data"] == base64.b64encode(b"raw").decode()
    assert file["_creationTime"] == 1712345670000.25 and file["contentType"] == "text/plain"
    assert call(target, "action", "read", id=file["_id"]) == "bytes from convex"
    assert [f for f in tmp_path.glob("t_*/**/*") if f.is_file()]  # where the bytes are (see the next test)


def test_a_line_violating_the_schema_refuses_the_whole_import(serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    target = serve()
    path = tmp_path / "bad.zip"
    author = "j57f3kqb1tqgkyrq1fwp3h0a2h6zz9a8"
    _convex_zip(path, [{"_id": "jd7ad0kzt3bn8s4gq1a9k0p7c16zz3xw", "author": author, "title": "fine"},
                       {"_id": "jd7ad0kzt3bn8s4gq1a9k0p7c16zz3xy", "author": author, "title": 12.5}])
    refused = ripple(target, "import", str(path))
    assert refused.returncode == 1
    assert "posts/documents.jsonl line 2 (table posts)" in refused.stderr, refused.stderr
    assert "`title`: Input should be a valid string (got 12.5)" in refused.stderr, refused.stderr
    assert "nothing was imported" in refused.stderr
    assert call(target, "query", "dump") == {"authors": [], "posts": [], "files": []}
    assert not [f for f in tmp_path.glob("t_*/**/*") if f.is_file()]  # the file's bytes removed again


def test_one_table_from_jsonl_json_and_csv_appended_or_replaced(serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    target = serve()
    csv_file = tmp_path / "authors.csv"
    csv_file.write_text("name,age\nAda,36\nBob,41.5\n")
    assert ripple(target, "import", "--table", "authors", str(csv_file)).returncode == 0
    names = lambda: sorted((a["name"], a["age"]) for a in call(target, "query", "dump")["authors"])  # noqa: E731
    assert names() == [("Ada", 36), ("Bob", 41.5)]

    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text('{"name": "Cy", "age": 7}\n')
    refused = ripple(target, "import", "--table", "authors", str(jsonl))
    assert refused.returncode == 1 and "already has documents" in refused.stderr
    assert ripple(target, "import", "--table", "authors", "--append", str(jsonl)).returncode == 0
    assert names() == [("Ada", 36), ("Bob", 41.5), ("Cy", 7)]

    array = tmp_path / "authors.json"
    array.write_text('[{"name": "Di", "age": 50}]')
    assert ripple(target, "import", "--table", "authors", "--replace", str(array)).returncode == 0
    assert names() == [("Di", 50)]

    bad = tmp_path / "bad.csv"
    bad.write_text("name,age\nEd,old\n")
    refused = ripple(target, "import", "--table", "authors", "--append", str(bad))
    assert refused.returncode == 1 and "bad.csv line 2" in refused.stderr and "age" in refused.stderr, refused.stderr
    assert names() == [("Di", 50)]
    unknown = ripple(target, "import", "--table", "nope", "--append", str(jsonl))
    assert unknown.returncode == 1 and "'nope' is not a table" in unknown.stderr


def test_an_import_is_not_held_to_one_mutations_write_limits(serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    """19 documents of ~950 KB: more than the 16 MiB a mutation may write, in one transaction."""
    target = serve()
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": f"{i:02}" + "x" * 950_000}) + "\n" for i in range(19)))
    imported = ripple(target, "import", "--table", "notes", str(big))
    assert imported.returncode == 0, imported.stderr
    assert "imported 19 documents into notes" in imported.stderr


def test_data_lists_tables_and_pages_of_documents(serve: Callable[[], ServerProcess]) -> None:
    server = serve()
    fill(server)
    tables = ripple(server, "data")
    assert tables.returncode == 0, tables.stderr
    names = tables.stdout.split()
    assert {"authors", "posts", "_storage", "_scheduled_functions"} <= set(names)
    assert "_environment_variables" not in names and names.index("posts") < names.index("_storage")
    newest = json.loads(ripple(server, "data", "authors", "--limit", "1").stdout)
    oldest = json.loads(ripple(server, "data", "authors", "--order", "asc").stdout)
    assert [d["name"] for d in newest] == ["Bob"] and [d["name"] for d in oldest] == ["Ada", "Bob"]
    assert oldest[0]["age"] == 36 and {"_id", "_creationTime"} <= set(oldest[0])
    unknown = ripple(server, "data", "nope")
    assert unknown.returncode == 1 and "no table 'nope'" in unknown.stderr and "authors" in unknown.stderr
    hidden = ripple(server, "data", "_environment_variables")
    assert hidden.returncode == 1 and "no table" in hidden.stderr
    assert ripple(server, "data", "authors", key="k-wrong").returncode == 1


def _bodies(server: ServerProcess, text: str, channel: str | None = None) -> list[str]:
    args: dict[str, Any] = {"text": text} if channel is None else {"text": text, "channel": channel}
    return [m["body"] for m in call(server, "query", "search", **args)]


def test_imported_documents_are_searchable_and_a_replace_takes_the_old_ones_out_of_search(
        serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    target = serve()
    first = tmp_path / "messages.jsonl"
    first.write_text("".join(json.dumps(m) + "\n" for m in [
        {"body": "the quick brown fox", "channel": "a"},
        {"body": "a lazy dog sleeps", "channel": "a"},
        {"body": "quick thinking wins", "channel": "b"},
    ]))
    assert ripple(target, "import", "--table", "messages", str(first)).returncode == 0
    assert sorted(_bodies(target, "quick")) == ["quick thinking wins", "the quick brown fox"]
    assert _bodies(target, "quick", "b") == ["quick thinking wins"]  # filter fields written too
    assert _bodies(target, "lazy dog") == ["a lazy dog sleeps"]

    second = tmp_path / "replacement.jsonl"
    second.write_text(json.dumps({"body": "a quick rabbit", "channel": "a"}) + "\n")
    replaced = ripple(target, "import", "--table", "messages", "--replace", str(second))
    assert replaced.returncode == 0, replaced.stderr
    assert _bodies(target, "quick") == ["a quick rabbit"]
    assert _bodies(target, "fox") == [] and _bodies(target, "lazy dog") == []


def test_export_then_import_keeps_search_results_identical(serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    source, target = serve(), serve()
    words = ["river", "stone", "quick", "silver", "moon", "garden", "quiet", "storm"]
    for i in range(40):  # term frequencies and lengths differ, so BM25 ranks them in a definite order
        body = " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 5))
        call(source, "mutation", "add_message", body=body, channel="ab"[i % 2])
    queries = [("quick", None), ("moon storm", None), ("river", "a"), ("sil", None), ("garden quiet", "b")]
    before = {q: call(source, "query", "search", text=q[0], channel=q[1]) for q in queries}
    assert all(before.values()) and len(before[("quick", None)]) > 5
    path = tmp_path / "snapshot.zip"
    assert ripple(source, "export", "--path", str(path)).returncode == 0
    imported = ripple(target, "import", str(path))
    assert imported.returncode == 0, imported.stderr
    assert "imported 40 documents into messages" in imported.stderr
    after = {q: call(target, "query", "search", text=q[0], channel=q[1]) for q in queries}
    assert after == before  # the same documents (ids, creation times) in the same relevance order


def _messages(path: Path, count: int, bad_at: int | None = None) -> None:
    with path.open("w") as out:
        for i in range(count):
            body: Any = 12.5 if i + 1 == bad_at else f"message number {i} about " + "words " * 10
            out.write(json.dumps({"body": body, "channel": "c"}) + "\n")


def test_a_failure_after_progress_lines_leaves_the_tables_and_search_unchanged(
        serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    """The NDJSON answer: progress for 25,000 documents, then the bad last line's error; the
    transaction rolled back all the same."""
    import httpx

    target = serve()
    path = tmp_path / "late.jsonl"
    _messages(path, 25_001, bad_at=25_001)
    query = {"table": "messages", "format": "jsonl", "mode": "empty", "name": path.name}
    with httpx.stream("POST", f"{target.url}/_ripple/import", params=query, content=path.read_bytes(), timeout=120,
                      headers={"Authorization": f"Convex {KEY}", "Accept": "application/x-ndjson"}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines()]
    assert lines[0] == {"documents": {"messages": 25_001}}
    assert lines[1:3] == [{"table": "messages", "written": 10_000}, {"table": "messages", "written": 20_000}]
    assert lines[-1]["error"]["code"] == "ImportRefused" and len(lines) == 4
    assert "late.jsonl line 25001 (table messages)" in lines[-1]["error"]["message"], lines[-1]
    assert "`body`: Input should be a valid string" in lines[-1]["error"]["message"], lines[-1]
    assert _bodies(target, "message") == [] and ripple(target, "data", "messages").stdout.strip() == "[]"

    refused = ripple(target, "import", "--table", "messages", str(path))  # the CLI reads the same lines
    assert refused.returncode == 1
    assert "late.jsonl line 25001 (table messages)" in refused.stderr and "nothing was imported" in refused.stderr
    assert "the server is writing 25,001 documents" in refused.stderr, refused.stderr


def test_an_import_whose_client_went_away_after_progress_lines_still_commits(
        serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    """The import runs as its own task: a client that hangs up mid-stream (Ctrl-C) does not cut it
    short, as a client that hangs up while waiting for the plain JSON answer does not."""
    import httpx

    target = serve()
    path = tmp_path / "messages.jsonl"
    _messages(path, 12_000)
    query = {"table": "messages", "format": "jsonl", "mode": "empty"}
    with httpx.stream("POST", f"{target.url}/_ripple/import", params=query, content=path.read_bytes(), timeout=120,
                      headers={"Authorization": f"Convex {KEY}", "Accept": "application/x-ndjson"}) as response:
        for line in response.iter_lines():
            if json.loads(line) == {"table": "messages", "written": 10_000}:
                break  # hang up here, 2,000 documents before the end
    deadline = time.monotonic() + 60
    while call(target, "query", "count_messages") != 12_000:
        assert time.monotonic() < deadline, "the import did not commit after its client went away"
        time.sleep(0.2)
    assert "import committed: {'messages': 12000}" in target.log()


def test_import_shows_progress_and_the_counts(serve: Callable[[], ServerProcess], tmp_path: Path) -> None:
    """A few MB through `ripple import`: on a pipe, the finished lines and the counts; on a
    terminal (a pseudo-tty), the bar redrawn in place and the server's progress too. The second
    import replaces 40,000 documents: more than the 32,000 a function may read, which a
    --replace reads to delete them (it failed with a Server Error before imports were exempt)."""
    import pty

    target = serve()
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"n": i, "text": "x" * 100}) + "\n" for i in range(40_000)))
    piped = ripple(target, "import", "--table", "notes", str(path))
    assert piped.returncode == 0, piped.stderr
    size = f"{path.stat().st_size / 2**20:.1f}"
    assert f"100%  {size} / {size} MiB" in piped.stderr and "MiB/s" in piped.stderr, piped.stderr
    assert "imported 40000 documents into notes" in piped.stderr
    assert "\r" not in piped.stderr  # no redrawing into a log
    # A wrong key is refused before the upload: sent anyway, the server's early 401 reached the
    # CLI as a broken connection ("no Ripple server at ...").
    refused = ripple(target, "import", "--table", "notes", "--replace", str(path), key="k-wrong")
    assert refused.returncode == 1 and "401: the admin key is not valid" in refused.stderr, refused.stderr

    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
    environment.update(PYTHONPATH=str(ROOT), RIPPLE_ADMIN_KEY=KEY, RIPPLE_URL=target.url)
    main, other = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "import", "--table", "notes", "--replace", str(path)],
                               cwd=str(ROOT), env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=other)
    os.close(other)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert process.wait(timeout=60) == 0, (shown, target.log()[-3000:])
    text = shown.decode()
    assert f"\ruploaded [{'#' * 24}] 100%  {size} / {size} MiB" in text, text
    assert "\rwriting notes: 10,000 / 40,000 documents" in text, text
    assert "imported 40000 documents into notes" in text
