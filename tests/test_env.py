"""Environment variables and the admin key, end to end: real `ripple` processes over a real
PostgreSQL, the `ripple env` CLI and the admin endpoints, our Python SDK on the websocket."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from client_sdk import RippleClient
from server import adminkey
from server.core import env

from conftest import APPS, ROOT, ServerProcess, Watcher, free_port, until

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]
ENV_APP = APPS / "env"
KEY = "k-" + secrets.token_hex(16)
ADMIN = {"Authorization": f"Convex {KEY}"}


def ripple(*args: str, cwd: Path = ROOT, stdin: str | None = None, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
    environment["PYTHONPATH"] = str(ROOT)
    if key is not None:
        environment["RIPPLE_ADMIN_KEY"] = key
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=str(cwd), env=environment, input=stdin,
                          capture_output=True, text=True, timeout=60)


def update(server: ServerProcess, *changes: dict[str, Any], headers: dict[str, str] = ADMIN, version: str = "") -> httpx.Response:
    return httpx.post(f"{server.url}/api{version}/update_environment_variables", json={"changes": list(changes)}, headers=headers)


def listed(server: ServerProcess, version: str = "") -> dict[str, str]:
    r = httpx.get(f"{server.url}/api{version}/list_environment_variables", headers=ADMIN)
    assert r.status_code == 200, r.text
    body: dict[str, str] = r.json()["environmentVariables"]
    return body


def run(server: ServerProcess, kind: str, path: str, args: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = httpx.post(f"{server.url}/api/{kind}", json={"path": path, "args": args}).json()
    return body


def serve(start_server: StartServer, **kw: Any) -> ServerProcess:
    return start_server("serve", app_dir=ENV_APP, extra_env={"RIPPLE_ADMIN_KEY": KEY}, **kw)


# -- rules ------------------------------------------------------------------------------------------

def test_names_values_and_batches_follow_convex_rules() -> None:
    for good in ("A", "_x", "OPENAI_API_KEY", "a" * 256):
        assert env.check_name(good) == good
    for bad, code in (("1A", "EnvironmentVariableNameInvalid"), ("A-B", "EnvironmentVariableNameInvalid"),
                      ("", "EnvironmentVariableNameInvalid"), ("A B", "EnvironmentVariableNameInvalid"),
                      ("a" * 257, "EnvironmentVariableNameTooLong"), (5, "EnvironmentVariableNameInvalid")):
        with pytest.raises(env.EnvVarError) as caught:
            env.check_name(bad)
        assert caught.value.code == code
    secret = "sek-" + secrets.token_hex(8)
    assert env.check_value("A", "x" * 8192) == "x" * 8192
    for bad_value in (secret * 1000, secret + "\x00", 7):
        with pytest.raises(env.EnvVarError) as caught:
            env.check_value("A", bad_value)
        assert "A" in str(caught.value) and secret not in str(caught.value)
    assert env.parse_changes({"changes": [{"name": "A", "value": "1"}, {"name": "B"}, {"name": "C", "value": None}]}) == [
        env.Change("A", "1"), env.Change("B", None), env.Change("C", None)]
    for body, needle in (({"changes": [{"name": "A"}, {"name": "A", "value": "2"}]}, "more than once"),
                         ({"changes": {}}, "changes"), ([], "changes"), ({"changes": [], "x": 1}, "unexpected"),
                         ({"changes": [{"name": "A", "value": "1", "extra": 2}]}, r"changes\[0\]")):
        with pytest.raises(env.EnvVarError, match=needle):
            env.parse_changes(body)
    with pytest.raises(env.EnvVarError, match="the limit is 512"):
        env.check_totals({f"V{i}": "" for i in range(513)})
    with pytest.raises(env.EnvVarError, match="524288"):
        env.check_totals({f"V{i}": "x" * 8000 for i in range(70)})


# -- the endpoint -----------------------------------------------------------------------------------

def test_endpoint_sets_lists_and_removes_atomically(start_server: StartServer) -> None:
    server = serve(start_server)
    assert listed(server) == {}
    assert update(server, {"name": "A", "value": "one"}, {"name": "B", "value": "two"}).status_code == 200
    assert listed(server) == listed(server, "/v1") == {"A": "one", "B": "two"}
    assert run(server, "query", "envs:read", {"name": "A"})["value"] == "one"
    assert update(server, {"name": "A", "value": "uno"}, {"name": "B"}, version="/v1").status_code == 200
    assert listed(server) == {"A": "uno"}
    assert run(server, "query", "envs:read", {"name": "B"})["value"] is None

    # A batch is all or nothing: one bad change refuses the others, clearly.
    r = update(server, {"name": "C", "value": "3"}, {"name": "bad-name", "value": "x"})
    assert r.status_code == 400 and r.json()["code"] == "EnvironmentVariableNameInvalid" and "bad-name" in r.json()["message"]
    r = update(server, {"name": "C", "value": "3"}, {"name": "D", "value": "v" * 8193})
    assert r.status_code == 400 and r.json()["code"] == "EnvironmentVariableValueTooLarge" and "D" in r.json()["message"]
    r = update(server, *({"name": f"BIG{i}", "value": "x" * 8000} for i in range(70)))  # over 512 KiB in all
    assert r.status_code == 400 and r.json()["code"] == "EnvVarTotalSizeLimitMet"
    r = httpx.post(f"{server.url}/api/update_environment_variables", content=b"{nope", headers=ADMIN)
    assert r.status_code == 400 and r.json()["code"] == "BadJsonBody"
    assert listed(server) == {"A": "uno"}


def test_endpoints_need_the_admin_key(start_server: StartServer) -> None:
    server = serve(start_server)
    for headers, code in (({}, "MissingAdminKey"), ({"Authorization": "Convex wrong"}, "BadAdminKey"),
                          ({"Authorization": f"Convex {KEY}x"}, "BadAdminKey"), ({"Authorization": "Bearer abc"}, "BadAuthHeader")):
        r = update(server, {"name": "A", "value": "1"}, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == code, r.text
        r = httpx.get(f"{server.url}/api/list_environment_variables", headers=headers)
        assert r.status_code == 401 and r.json()["code"] == code
    assert listed(server) == {}


def test_serve_without_an_admin_key_refuses_admin_requests_and_says_how(start_server: StartServer) -> None:
    server = start_server("serve", app_dir=ENV_APP)
    assert "no admin key configured" in server.log() and "RIPPLE_ADMIN_KEY" in server.log()
    r = update(server, {"name": "A", "value": "1"})
    assert r.status_code == 401 and r.json()["code"] == "AdminKeyNotConfigured" and "RIPPLE_ADMIN_KEY" in r.json()["message"]
    r = httpx.post(f"{server.url}/api/function", json={"path": "envs:read", "args": {"name": "A"}}, headers=ADMIN)
    assert r.status_code == 401 and "RIPPLE_ADMIN_KEY" in r.json()["message"]
    assert run(server, "query", "envs:read", {"name": "A"})["value"] is None  # public functions still served


# -- the CLI ----------------------------------------------------------------------------------------

def test_cli_sets_gets_lists_and_removes(start_server: StartServer, tmp_path: Path) -> None:
    server = serve(start_server)
    url = ("--url", server.url)
    assert ripple("env", "set", "PLAIN", "hello world", *url).returncode == 0
    out = ripple("env", "set", "FROM_STDIN", *url, stdin="piped-value\n")  # echo's newline is not part of it
    assert out.returncode == 0 and "piped-value" not in out.stdout + out.stderr
    assert ripple("env", "get", "FROM_STDIN", *url).stdout == "piped-value\n"
    assert ripple("env", "list", *url).stdout == "FROM_STDIN=piped-value\nPLAIN=hello world\n"
    assert run(server, "query", "envs:read", {"name": "PLAIN"})["value"] == "hello world"
    assert ripple("env", "remove", "PLAIN", *url).returncode == 0
    assert listed(server) == {"FROM_STDIN": "piped-value"}

    out = ripple("env", "get", "PLAIN", *url)
    assert out.returncode == 1 and "PLAIN is not set" in out.stderr
    out = ripple("env", "set", "9LIVES", "x", *url)
    assert out.returncode == 1 and "9LIVES" in out.stderr and "invalid" in out.stderr
    out = ripple("env", "set", "HUGE", "x" * 9000, *url)
    assert out.returncode == 1 and "8192" in out.stderr
    out = ripple("env", "list", *url, key="wrong")
    assert out.returncode == 1 and "401" in out.stderr and "not valid" in out.stderr
    out = ripple("env", "list", *url, key=None, cwd=tmp_path)
    assert out.returncode == 1 and "no admin key" in out.stderr
    out = ripple("env", "list", "--url", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert out.returncode == 1 and "no Ripple server at" in out.stderr
    help_text = ripple("--help").stdout
    assert "env" in help_text and "environment variables" in help_text


# -- functions reading them -------------------------------------------------------------------------

def test_mutations_and_actions_read_variables(start_server: StartServer) -> None:
    server = serve(start_server)
    update(server, {"name": "SERVICE_URL", "value": "https://example.test/hook"})
    assert run(server, "mutation", "envs:record", {"name": "SERVICE_URL"})["value"] == "https://example.test/hook"
    assert run(server, "action", "envs:read_in_action", {"name": "SERVICE_URL"})["value"] == {
        "value": "https://example.test/hook", "viaQuery": "https://example.test/hook"}
    assert run(server, "query", "envs:present", {"name": "SERVICE_URL"})["value"] is True
    # The built-in variables are there too, as they are in Convex's process.env.
    assert run(server, "query", "envs:names", {})["value"] == ["CONVEX_CLOUD_URL", "CONVEX_SITE_URL", "SERVICE_URL"]
    missing = run(server, "query", "envs:required", {"name": "NOPE"})
    assert missing["status"] == "error" and "Server Error" in missing["errorMessage"]  # redacted outside dev
    refused = run(server, "query", "envs:system_table", {})
    assert refused["status"] == "error"


async def test_a_live_query_reruns_when_its_variable_changes_and_only_then(start_server: StartServer) -> None:
    server = serve(start_server)
    update(server, {"name": "WATCHED", "value": "v1"})
    async with RippleClient(server.url) as client:
        watched = Watcher(client, "envs:read", {"name": "WATCHED"})
        late = Watcher(client, "envs:present", {"name": "LATE"})
        await until(lambda: watched.latest == "v1" and late.latest is False)

        update(server, {"name": "WATCHED", "value": "v2"})
        await until(lambda: watched.latest == "v2")
        update(server, {"name": "LATE", "value": "here"})  # a missing variable's read is a read too
        await until(lambda: late.latest is True)

        # Another variable changing re-runs neither; WATCHED changing after it re-runs one query.
        before = server.metrics()["ripple_query_executions_total"]
        update(server, {"name": "OTHER", "value": "x"})
        update(server, {"name": "WATCHED", "value": "v3"})
        await until(lambda: watched.latest == "v3")
        assert server.metrics()["ripple_query_executions_total"] - before == 1
        assert watched.values == ["v1", "v2", "v3"] and late.values == [False, True]
        await watched.stop()
        await late.stop()


async def test_two_processes_see_each_others_changes_without_restart(start_server: StartServer, namespace: str) -> None:
    first, second = serve(start_server, schema=namespace), serve(start_server, schema=namespace)
    assert update(first, {"name": "SHARED", "value": "from-first"}).status_code == 200
    await until(lambda: run(second, "query", "envs:read", {"name": "SHARED"})["value"] == "from-first", interval=0.1)
    async with RippleClient(first.url) as client:
        live = Watcher(client, "envs:read", {"name": "SHARED"})
        await until(lambda: live.latest == "from-first")
        assert update(second, {"name": "SHARED", "value": "from-second"}).status_code == 200
        await until(lambda: live.latest == "from-second")
        await live.stop()
    await until(lambda: run(first, "action", "envs:read_in_action", {"name": "SHARED"})["value"]["value"] == "from-second",
                interval=0.1)


# -- secrets hygiene --------------------------------------------------------------------------------

def test_values_never_reach_logs_or_error_messages(start_server: StartServer, tmp_path: Path) -> None:
    secret = "sek-" + secrets.token_hex(12)
    app = tmp_path / "app"
    shutil.copytree(ENV_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    server = start_server("dev", app_dir=app)  # dev mode: full error text reaches clients, log lines too
    url = ("--url", server.url)
    assert ripple("env", "set", "TOKEN", *url, cwd=app, key=None, stdin=secret).returncode == 0
    assert update(server, {"name": "TOKEN2", "value": secret}, headers={"Authorization": f"Convex {_key(app)}"}).status_code == 200
    answers = [
        run(server, "mutation", "envs:record", {"name": "TOKEN"}),
        run(server, "query", "envs:fails_after_reading", {"name": "TOKEN"}),
        run(server, "query", "envs:required", {"name": "NOT_SET"}),
        run(server, "query", "envs:system_table", {}),
        run(server, "action", "envs:leaks", {"name": "TOKEN"}),
    ]
    assert answers[0]["value"] == secret  # what a function returns is its business
    assert [a["status"] for a in answers[1:]] == ["error"] * 4
    assert "NOT_SET" in answers[2]["errorMessage"] and "ripple env set NOT_SET" in answers[2]["errorMessage"]
    leaked = answers[4]  # the value quoted by function code is masked, in its failure and its log lines
    assert "https://hooks.example.test/[env TOKEN]" in leaked["errorMessage"]
    assert leaked["logLines"] == ["[LOG] calling with [env TOKEN]", "[WARN] token is [env TOKEN]"]
    assert "hooks.example.test/[env TOKEN]" in server.log() and "token is [env TOKEN]" in server.log()
    refusals = [
        update(server, {"name": "TOKEN3", "value": secret * 500}, headers={"Authorization": f"Convex {_key(app)}"}),
        update(server, {"name": "bad name", "value": secret}, headers={"Authorization": f"Convex {_key(app)}"}),
        update(server, {"name": "TOKEN4", "value": secret}, headers={"Authorization": "Convex wrong"}),
    ]
    assert [r.status_code for r in refusals] == [400, 400, 401]
    cli = ripple("env", "set", "TOKEN5", secret * 500, *url, cwd=app, key=None)
    assert cli.returncode == 1
    for text in [*(str(a) for a in answers[1:]), *(r.text for r in refusals), cli.stderr, cli.stdout]:
        assert secret not in text
    assert secret not in server.log()


def test_masking_hides_values_of_eight_characters_or_more() -> None:
    values = env.EnvValues()
    values.replace({"SHORT": "true", "KEY": "abc.def*ghi", "LONGER": "abc.def*ghi-and-more", "URL": "https://x.test/p?q=1"}, 1)
    assert values.mask("true: abc.def*ghi-and-more, abc.def*ghi, abcXdef*ghi, https://x.test/p?q=1") == (
        "true: [env LONGER], [env KEY], abcXdef*ghi, [env URL]")
    values.replace({}, 2)
    assert values.mask("abc.def*ghi") == "abc.def*ghi"
    assert not values.replace({"KEY": "abc.def*ghi"}, 1)  # older than what is held: ignored
    assert values.mask("abc.def*ghi") == "abc.def*ghi"


def _key(app: Path) -> str:
    return (app / adminkey.KEY_FILE).read_text().strip()


# -- the admin key ----------------------------------------------------------------------------------

def test_dev_makes_the_admin_key_file_0600_and_prints_the_key_once(start_server: StartServer, tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(ENV_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    old = os.umask(0)  # as permissive as it gets: the mode must not come from the umask
    try:
        first = start_server("dev", app_dir=app)
    finally:
        os.umask(old)
    key_file = app / adminkey.KEY_FILE
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 40 and first.log().count(key) == 1
    assert httpx.get(f"{first.url}/api/list_environment_variables", headers={"Authorization": f"Convex {key}"}).status_code == 200
    first.stop()
    second = start_server("dev", app_dir=app)
    assert key not in second.log() and str(key_file) in second.log()
    assert key_file.read_text().strip() == key


def test_racing_starts_agree_on_one_key(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    results: list[tuple[str, bool]] = []

    def start() -> None:
        barrier.wait()
        results.append(adminkey.dev_key(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({key for key, _ in results}) == 1 and sum(created for _, created in results) == 1
    assert sorted(p.name for p in (tmp_path / ".ripple").iterdir()) == ["admin_key"]  # no temporary file left


def test_admin_key_check() -> None:
    adminkey.verify("k", "k")
    adminkey.verify("k", " k ")
    for configured, presented, code in ((None, "k", "AdminKeyNotConfigured"), ("k", None, "MissingAdminKey"),
                                        ("k", "", "MissingAdminKey"), ("k", "K", "BadAdminKey"), ("k", "kk", "BadAdminKey")):
        with pytest.raises(adminkey.AdminKeyRefused) as caught:
            adminkey.verify(configured, presented)
        assert caught.value.code == code
