"""The `ripple` command as a new user runs it: dev on the embedded PostgreSQL, reload, run, serve."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from server import devserver
from server.cli import DEFAULT_URL, build_parser, client_admin_key, server_url

from conftest import BASIC_APP, ROOT, ServerProcess, free_port, wait_for, wait_healthy

pytestmark = pytest.mark.e2e


def ripple(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=str(cwd), env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_dev_on_embedded_postgres_with_reload_and_run(tmp_path: Path) -> None:
    app = tmp_path / "myapp"
    app.mkdir()
    shutil.copy(ROOT / "schema.py", app / "schema.py")
    shutil.copytree(ROOT / "functions", app / "functions")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dev.log"

    def start() -> ServerProcess:
        with log_path.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "server.cli", "dev", "--port", str(port)], cwd=str(app),
                                    env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
        server = ServerProcess(proc, url, log_path)
        wait_healthy(url, proc, log_path, timeout=120)
        return server

    server = start()
    try:
        assert (app / ".ripple" / "pgdata" / "PG_VERSION").exists()
        assert f"Ripple dev server: {url}" in server.log()
        r = httpx.post(f"{url}/api/query", json={"path": "users:me", "args": {}})
        assert r.json() == {"status": "success", "value": None, "logLines": []}, r.text  # signed out

        # `ripple run` acts as the admin: internal functions are allowed, and it has no identity.
        out = ripple("run", "users:addReviewer", '{"tokenIdentifier": "https://issuer.example|riley"}', "--url", url, cwd=app)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "true"

        out = ripple("run", "campaigns:create", '{"name": "Launch", "brand": "Acme"}', "--url", url, cwd=app)
        assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr

        # Adding a function is picked up without a restart.
        with (app / "functions" / "users.py").open("a") as f:
            f.write("\n\n@query\nasync def count(ctx) -> int:\n    return len(await ctx.db.query('reviewers').collect())\n")

        def count_works() -> bool:
            r = httpx.post(f"{url}/api/query", json={"path": "users:count", "args": {}})
            return r.status_code == 200 and r.json().get("value") == 1

        wait_for(count_works)

        # A broken edit keeps the previous version serving and says why in the log.
        (app / "functions" / "broken.py").write_text("def oops(:\n")
        wait_for(lambda: "reload after change to broken.py failed; still serving the previous version: "
                         "functions/broken.py:1: SyntaxError: invalid syntax" in server.log())
        assert count_works()
        (app / "functions" / "broken.py").unlink()
    finally:
        server.stop()

    # SIGTERM (what process managers and CI send) stops the embedded PostgreSQL too: it used to
    # outlive `ripple dev`. PostgreSQL removes postmaster.pid when it has shut down.
    postmaster_pid = app / ".ripple" / "pgdata" / "postmaster.pid"
    assert server.proc.returncode == 128 + signal.SIGTERM
    wait_for(lambda: not postmaster_pid.exists())

    # Data survives a restart of `ripple dev` (the embedded database persists under .ripple/).
    server = start()
    try:
        r = httpx.post(f"{url}/api/query", json={"path": "users:count", "args": {}})
        assert r.json()["value"] == 1
    finally:
        server.stop()
    wait_for(lambda: not postmaster_pid.exists())

    # A `ripple dev` killed with SIGKILL leaves PostgreSQL running; the next one reuses it and,
    # when it exits, still stops it (the killed one is not counted as a user any more).
    server = start()
    server.proc.kill()
    server.proc.wait()
    assert postmaster_pid.exists()
    server = start()
    server.stop()
    wait_for(lambda: not postmaster_pid.exists())


def test_helpful_errors(tmp_path: Path) -> None:
    out = ripple("serve", "--port", str(free_port()), "--dir", str(ROOT), cwd=tmp_path)
    assert out.returncode != 0 and "database URL is required" in out.stderr
    out = ripple("dev", "--port", str(free_port()), cwd=tmp_path)
    assert out.returncode != 0 and "has no schema.py or functions/" in out.stderr
    out = ripple("run", "videos:listMine", "{not json", cwd=tmp_path)
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = ripple("run", "videos:listMine", "{}", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert out.returncode == 1 and "no Ripple server at" in out.stderr
    out = ripple("run", "videos:listMine", "{}", "--url", "localhost:3210", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == ("ripple run: the server URL 'localhost:3210' (from --url) is not an http:// URL, "
                          "such as http://127.0.0.1:3210\n")


def test_serve_takes_the_database_url_and_schema_as_arguments(pg_url: str, namespace: str, tmp_path: Path) -> None:
    """--database-url with the suite's database (a Unix-socket URL when it is the embedded one)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--dir", str(BASIC_APP),
                                 "--database-url", pg_url, "--db-schema", namespace],
                                cwd=str(tmp_path), env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, url, log_path)
    try:
        wait_healthy(url, proc, log_path)
        out = ripple("run", "counters:inc", '{"name": "arg-url"}', "--url", url, cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
    finally:
        server.stop()


def test_run_calls_internal_functions_with_the_admin_key(start_server: object, tmp_path: Path) -> None:
    server = start_server("serve", extra_env={"RIPPLE_ADMIN_KEY": "k-123"})  # type: ignore[operator]
    env = {**clean_env(), "RIPPLE_ADMIN_KEY": "k-123"}
    out = ripple("run", "counters:inc", '{"name": "cli"}', "--url", server.url, cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "1"
    out = ripple("run", "counters:reset", '{"name": "cli"}', "--url", server.url, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    out = ripple("run", "counters:reset", '{"name": "cli"}', "--url", server.url, cwd=tmp_path)
    assert out.returncode == 1 and "Could not find public function" in out.stderr


def test_reload_filter_keeps_only_app_sources(tmp_path: Path) -> None:
    from server.runner import app_source_filter

    keep = app_source_filter(tmp_path)
    kept = ["schema.py", "functions", "functions/a.py", "functions/sub/b.py"]
    ignored = [".ripple/admin_key", ".ripple/pgdata/x.py", "other.py", "data/schema.py", "functions/notes.txt",
               "functions/__pycache__/a.cpython-311.pyc", "functions/.hidden/c.py", "functions/__pycache__/x.py"]
    assert [p for p in kept if keep(None, str(tmp_path / p))] == kept
    assert [p for p in ignored if keep(None, str(tmp_path / p))] == []
    assert not keep(None, str(tmp_path.parent / (tmp_path.name + "2") / "schema.py"))


def test_dev_reload_picks_up_a_functions_folder_created_after_start(start_server: object, tmp_path: Path) -> None:
    app = tmp_path / "late"
    app.mkdir()
    (app / "schema.py").write_text("from server import Schema, Table\nschema = Schema(notes=Table())\n")
    server: ServerProcess = start_server("dev", app_dir=app)  # type: ignore[operator]
    (app / "functions").mkdir()
    source = "from server import query\n@query\nasync def hi(ctx) -> str:\n    return 'hi'\n"

    def hello_works() -> bool:
        r = httpx.post(f"{server.url}/api/query", json={"path": "hello:hi", "args": {}})
        if r.status_code == 200 and r.json().get("value") == "hi":
            return True
        (app / "functions" / "hello.py").write_text(source)  # (re)written: the watcher may start late
        return False

    wait_for(hello_works)
    # The new version serves from the moment it is swapped in (Runtime.load), a few awaits
    # before the reload is logged.
    wait_for(lambda: "reloaded after change to" in server.log())


# -- starting with errors ---------------------------------------------------------------------------

BROKEN_MODULE = "from server import query\n\nvalue = undefined_name\n\n\n@query\nasync def hello(ctx) -> str:\n    return 'hello'\n"
BROKEN_ERROR = "functions/broken.py:3: NameError: name 'undefined_name' is not defined"


def example_app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "schema.py", app / "schema.py")
    shutil.copytree(ROOT / "functions", app / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    return app


def db_env(pg_url: str, namespace: str) -> dict[str, str]:
    return {**clean_env(), "DATABASE_URL": pg_url, "RIPPLE_DB_SCHEMA": namespace}


def call(url: str, path: str, kind: str = "query") -> httpx.Response:
    return httpx.post(f"{url}/api/{kind}", json={"path": path, "args": {}})


def test_dev_starts_with_a_broken_module_and_serves_the_others(start_server: object, tmp_path: Path) -> None:
    app = example_app(tmp_path)
    broken = app / "functions" / "broken.py"
    broken.write_text(BROKEN_MODULE)
    server: ServerProcess = start_server("dev", app_dir=app)  # type: ignore[operator]

    health = httpx.get(f"{server.url}/_ripple/health").json()
    assert health["status"] == "ok" and health["loadErrors"] == {"functions/broken.py": BROKEN_ERROR}
    assert call(server.url, "users:me").json()["status"] == "success"
    r = call(server.url, "broken:hello")
    assert r.status_code == 404 and r.json() == {
        "code": "FunctionUnavailable",
        "message": f"Function 'broken:hello' is unavailable: functions/broken.py failed to load: {BROKEN_ERROR}",
    }
    log = server.log()
    assert BROKEN_ERROR in log and "Traceback" not in log

    def hello_works() -> bool:
        if call(server.url, "broken:hello").json().get("value") == "hello":
            return True
        broken.write_text(BROKEN_MODULE.replace("undefined_name", "42"))  # (re)written: the watcher may start late
        return False

    wait_for(hello_works)
    assert "loadErrors" not in httpx.get(f"{server.url}/_ripple/health").json()


def test_dev_with_a_broken_schema_stays_up_and_reports_it_until_fixed(tmp_path: Path, pg_url: str, namespace: str) -> None:
    app = tmp_path / "app"
    (app / "functions").mkdir(parents=True)
    (app / "schema.py").write_text("from server import Schema, Table\n\nschema = Schema(notes=Table(\n")
    (app / "functions" / "notes.py").write_text(
        "from server import query\n\n\n@query\nasync def count(ctx) -> int:\n"
        "    return len(await ctx.db.query('notes').collect())\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "dev", "--port", str(port)], cwd=str(app),
                                env=db_env(pg_url, namespace), stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, url, log_path)
    error = "schema.py:3: SyntaxError: '(' was never closed"
    try:
        def health() -> httpx.Response | None:
            assert proc.poll() is None, server.log()
            try:
                return httpx.get(f"{url}/_ripple/health", timeout=1)
            except httpx.HTTPError:
                return None

        wait_for(lambda: (r := health()) is not None and r.status_code == 503 and r.json()["status"] == "load failed")
        assert health().json() == {"status": "load failed", "error": error}  # type: ignore[union-attr]
        r = call(url, "notes:count")
        assert r.status_code == 503 and r.json() == {"code": "AppLoadFailed", "message": f"the app failed to load: {error}"}
        out = ripple("run", "notes:count", cwd=app)  # finds the server in .ripple/, says what is wrong
        assert out.returncode == 1 and f"503: the app failed to load: {error}" in out.stderr
        assert "Traceback" not in server.log()

        def count_works() -> bool:
            if call(url, "notes:count").json().get("value") == 0:
                return True
            (app / "schema.py").write_text("from server import Schema, Table\n\nschema = Schema(notes=Table())\n")
            return False

        wait_for(count_works)
        assert health().json()["status"] == "ok"  # type: ignore[union-attr]
    finally:
        server.stop()


def test_serve_refuses_an_app_that_does_not_load_in_one_paragraph(tmp_path: Path, pg_url: str, namespace: str) -> None:
    app = example_app(tmp_path)
    (app / "functions" / "broken.py").write_text(BROKEN_MODULE)
    out = ripple("serve", "--port", str(free_port()), "--dir", str(app), cwd=tmp_path, env=db_env(pg_url, namespace))
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == f"ripple serve: the app in {app.resolve()} failed to load: {BROKEN_ERROR}"
    assert "Traceback" not in out.stderr + out.stdout and "serving" not in out.stderr + out.stdout

    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    out = ripple("serve", "--port", str(free_port()), "--dir", str(BASIC_APP), "--database-url", dead_db, cwd=tmp_path)
    assert out.returncode == 1 and "ripple serve: cannot connect to the database: " in out.stderr.splitlines()[-1]
    assert "Traceback" not in out.stderr


def test_a_port_in_use_fails_at_once_without_claiming_to_serve(start_server: object, tmp_path: Path, pg_url: str, namespace: str) -> None:
    first: ServerProcess = start_server("serve")  # type: ignore[operator]
    port = first.url.rsplit(":", 1)[1]
    out = ripple("serve", "--port", port, "--dir", str(BASIC_APP), cwd=tmp_path, env=db_env(pg_url, namespace))
    assert out.returncode == 1, out.stderr
    assert out.stderr == (f"ripple serve: port {port} on 127.0.0.1 is already in use (another server is listening "
                          "there); choose another with --port\n")
    assert "serving" not in out.stdout

    app = tmp_path / "app"
    shutil.copytree(BASIC_APP, app)
    out = ripple("dev", "--port", port, cwd=app)  # no database URL: it would start the embedded PostgreSQL
    assert out.returncode == 1 and out.stderr.startswith(f"ripple dev: port {port} on 127.0.0.1 is already in use")
    assert out.stdout == "" and not (app / ".ripple" / "pgdata").exists()
    assert httpx.get(f"{first.url}/_ripple/health").status_code == 200


# -- ripple run finds ripple dev ----------------------------------------------------------------------

def test_run_finds_the_dev_server_on_its_port(start_server: object, tmp_path: Path) -> None:
    app = example_app(tmp_path)
    server: ServerProcess = start_server("dev", app_dir=app)  # type: ignore[operator]
    record = json.loads((app / ".ripple" / "dev_server.json").read_text())
    assert record == {"url": server.url, "pid": server.proc.pid}

    out = ripple("run", "users:me", cwd=app)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is None

    dead = f"http://127.0.0.1:{free_port()}"
    out = ripple("run", "users:me", cwd=app, env={**clean_env(), "RIPPLE_URL": dead})
    assert out.returncode == 1
    assert out.stderr.startswith(f"ripple run: no Ripple server at {dead} (from RIPPLE_URL): ")
    assert "--url or RIPPLE_URL" in out.stderr

    server.stop()
    assert not (app / ".ripple" / "dev_server.json").exists()


def test_run_chooses_url_then_env_then_the_dev_record_then_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIPPLE_URL", raising=False)

    def chosen(*extra: str) -> str:
        return server_url(build_parser().parse_args(["run", "x:y", "--dir", str(tmp_path), *extra]))[0]

    assert chosen() == DEFAULT_URL
    devserver.record(tmp_path, "http://127.0.0.1:4000")  # recorded by this (live) process
    assert chosen() == "http://127.0.0.1:4000"
    monkeypatch.setenv("RIPPLE_URL", "http://env:1")
    assert chosen() == "http://env:1"
    assert chosen("--url", "http://flag:2") == "http://flag:2"
    monkeypatch.delenv("RIPPLE_URL")

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    record = tmp_path / ".ripple" / "dev_server.json"
    record.write_text(json.dumps({"url": "http://127.0.0.1:4000", "pid": exited.pid}))
    assert chosen() == DEFAULT_URL  # its `ripple dev` is gone (killed: it could not remove it)
    devserver.forget(tmp_path)
    assert record.exists()  # not this process's record: left to its owner


def test_admin_key_comes_from_the_flag_then_the_env_then_the_dev_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def chosen(*extra: str) -> str | None:
        return client_admin_key(build_parser().parse_args(["data", "--dir", str(tmp_path), *extra]))

    monkeypatch.delenv("RIPPLE_ADMIN_KEY", raising=False)
    assert chosen() is None
    (tmp_path / ".ripple").mkdir()
    (tmp_path / ".ripple" / "admin_key").write_text("from-file\n")
    assert chosen() == "from-file"
    monkeypatch.setenv("RIPPLE_ADMIN_KEY", "")  # empty counts as unset, as for every RIPPLE_ variable
    assert chosen() == "from-file"
    monkeypatch.setenv("RIPPLE_ADMIN_KEY", "from-env")
    assert chosen() == "from-env" and chosen("--admin-key", "from-flag") == "from-flag"


# -- help and docs/cli.md ------------------------------------------------------------------------------

def _commands(parser: argparse.ArgumentParser, prefix: str = "ripple") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _commands(sub, f"{prefix} {name}")


def test_help_lists_every_command_and_docs_cli_md_every_option(tmp_path: Path) -> None:
    """`ripple --help` names each command with a one-line summary, each command's --help starts
    with a description, and docs/cli.md has a section per command that shows every option its
    --help prints (a command or option added without its documentation fails here)."""
    listing = ripple("--help", cwd=tmp_path).stdout
    doc = (ROOT / "docs" / "cli.md").read_text()
    for command, parser in _commands(build_parser()):
        assert parser.description, f"{command} --help has no description"
        if command.count(" ") == 1:
            name = command.split()[1]
            assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in listing.splitlines()), listing
            assert f"\n### {command}\n" in doc, f"docs/cli.md has no section for {command}"
        top = " ".join(command.split()[:2])
        section = doc.split(f"\n### {top}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in section, f"docs/cli.md, section {top}, does not mention {option}"


# -- version and distribution --------------------------------------------------------------------------

def test_version_comes_from_the_ripple_backend_distribution(tmp_path: Path) -> None:
    out = ripple("--version", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"ripple-backend {metadata.version('ripple-backend')}\n"
    scripts = metadata.distribution("ripple-backend").entry_points.select(group="console_scripts")
    assert [(e.name, e.value) for e in scripts] == [("ripple", "server.cli:main")]


def test_init_writes_an_app_that_serves_and_never_overwrites(start_server: object, tmp_path: Path) -> None:
    out = ripple("init", "chat", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    app = tmp_path / "chat"
    assert sorted(p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()) == [
        ".gitignore", "README.md", "functions/messages.py", "schema.py"]
    assert "next: cd chat && ripple dev" in out.stdout
    again = ripple("init", "chat", cwd=tmp_path)
    assert again.returncode == 1 and "already holds" in again.stderr and "schema.py" in again.stderr
    server = start_server("serve", app_dir=app)  # type: ignore[operator]
    sent = ripple("run", "messages:send", '{"author": "ann", "body": "hello there"}', "--url", server.url, cwd=app)
    assert sent.returncode == 0, sent.stderr
    listed = ripple("run", "messages:latest", "--url", server.url, cwd=app)
    assert [m["body"] for m in json.loads(listed.stdout)] == ["hello there"]
    found = ripple("run", "messages:search", '{"text": "hel"}', "--url", server.url, cwd=app)
    assert [m["body"] for m in json.loads(found.stdout)] == ["hello there"]


def test_run_watch_prints_each_new_result(start_server: object, tmp_path: Path) -> None:
    server = start_server("serve", extra_env={"RIPPLE_ADMIN_KEY": "k-watch"})  # type: ignore[operator]
    env = {**clean_env(), "RIPPLE_ADMIN_KEY": "k-watch", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "server.cli", "run", "--watch", "counters:get", '{"name": "w"}', "--url", server.url]
    with subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "0"
            for expected in ("1", "2"):
                assert ripple("run", "counters:inc", '{"name": "w"}', "--url", server.url, cwd=tmp_path).returncode == 0
                assert proc.stdout.readline().strip() == expected
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    # without the admin key, an internal query is refused, named
    out = subprocess.run([*cmd[:4], "counters:reset", "{}", "--url", server.url], cwd=str(tmp_path), env=clean_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "counters:reset" in out.stderr
    nowhere = ripple("run", "--watch", "counters:get", "{}", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert nowhere.returncode == 1 and "no Ripple server" in nowhere.stderr
