"""The `ripple` command as a new user runs it: dev on the embedded PostgreSQL, reload, run, serve."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import BASIC_APP, ROOT, ServerProcess, free_port, wait_healthy

pytestmark = pytest.mark.e2e


def ripple(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=str(cwd), env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def wait_for(predicate: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


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
        r = httpx.post(f"{url}/api/mutation", json={"path": "campaigns:create", "args": {"name": "Launch", "brand": "Acme"}})
        assert r.json()["status"] == "success", r.text

        out = ripple("run", "campaigns:list", "{}", "--url", url, cwd=app)
        assert out.returncode == 0, out.stderr
        assert '"name": "Launch"' in out.stdout

        out = ripple("run", "campaigns:create", '{"name": "Launch", "brand": "Acme"}', "--url", url, cwd=app)
        assert out.returncode == 1 and "NAME_TAKEN" in out.stderr

        # Adding a function is picked up without a restart.
        with (app / "functions" / "campaigns.py").open("a") as f:
            f.write("\n\n@query\nasync def count(ctx) -> int:\n    return len(await ctx.db.query('campaigns').collect())\n")

        def count_works() -> bool:
            r = httpx.post(f"{url}/api/query", json={"path": "campaigns:count", "args": {}})
            return r.status_code == 200 and r.json().get("value") == 1

        wait_for(count_works)

        # A broken edit keeps the previous version serving and says why in the log.
        (app / "functions" / "broken.py").write_text("def oops(:\n")
        wait_for(lambda: "reload after change to broken.py failed" in server.log())
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
        r = httpx.post(f"{url}/api/query", json={"path": "campaigns:list", "args": {}})
        assert [c["name"] for c in r.json()["value"]] == ["Launch"]
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
    out = ripple("run", "videos:list", "{not json", cwd=tmp_path)
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = ripple("run", "videos:list", "{}", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert out.returncode == 1 and "no Ripple server at" in out.stderr


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
    assert "reloaded after change to" in server.log()
