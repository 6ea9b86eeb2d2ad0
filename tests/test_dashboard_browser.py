"""The dashboard (server/dashboard/, docs/dashboard.md) in headless Chromium against a real
`ripple dev` of tests/apps/dashboard, as a developer uses it: the admin key refused when wrong,
then a table that changes live while Python writes to it over HTTP, a document edited (and an
edit the schema refuses), the function runner as the admin and as a user, a pending job
cancelled, an environment variable added, an image uploaded in Files with its preview rendered,
the runner's call in the Logs tail; and the same page at a phone's size without sideways
scrolling. No page is reloaded (a marker set on `window` must survive).

Set RIPPLE_DASHBOARD_SCREENSHOT=docs/images/dashboard.png to refresh the documentation's
screenshot from a run (the Data section with an edited document open).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from conftest import ROOT, ServerProcess, drop_schemas, free_port, launch

pytestmark = pytest.mark.e2e

APP = ROOT / "tests" / "apps" / "dashboard"
WAIT_MS = 10_000
MARKUP = '<img src="x" onerror="window.__injected = 1"><b>bold?</b>'


@dataclass
class Deployment:
    server: ServerProcess
    admin_key: str


def tiny_png(path: Path, width: int = 3, height: int = 2) -> Path:
    """A real PNG (8-bit RGB, every pixel orange), written by hand: zlib and CRCs, no library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x80\x00" * width for _ in range(height))  # filter byte 0, then RGB
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def start_deployment(pg_url: str, tmp_path: Path, mode: str) -> Iterator[Deployment]:
    """`ripple <mode>` of a copy of tests/apps/dashboard (its .ripple/ is written there, not into
    the checkout) on a PostgreSQL schema of its own. `ripple dev` makes the admin key in
    .ripple/admin_key; `ripple serve` is given one."""
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", ".ripple"))
    schema = "t_" + secrets.token_hex(6)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
    if mode == "serve":
        env["RIPPLE_ADMIN_KEY"] = secrets.token_urlsafe(24)
    cmd = [sys.executable, "-m", "server.cli", mode, "--port", str(port), "--dir", str(app),
           "--database-url", pg_url, "--db-schema", schema]
    server = launch(cmd, port, tmp_path / "server.log", env)
    try:
        key = env.get("RIPPLE_ADMIN_KEY") or (app / ".ripple" / "admin_key").read_text().strip()
        yield Deployment(server, key)
    finally:
        server.stop()
        drop_schemas(pg_url, schema)


@pytest.fixture
def deployment(pg_url: str, tmp_path: Path) -> Iterator[Deployment]:
    yield from start_deployment(pg_url, tmp_path, "dev")


@pytest.fixture
def production(pg_url: str, tmp_path: Path) -> Iterator[Deployment]:
    yield from start_deployment(pg_url, tmp_path, "serve")


def open_page(browser: Browser, viewport: dict[str, int], errors: list[str]) -> Page:
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    return page


def log_in(page: Page, deployment: Deployment) -> None:
    page.goto(f"{deployment.server.url}/_ripple/")
    page.get_by_test_id("login-key").fill(deployment.admin_key)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("shell")).to_be_visible()
    expect(page.get_by_test_id("connection-state")).to_have_attribute("data-state", "connected")
    page.evaluate("window.__loadedOnce = 'marker'")


def signed_in_address(deployment: Deployment) -> str:
    """What `ripple dashboard --no-open` prints (after refusing a wrong key)."""
    def dashboard(key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server.cli", "dashboard", "--no-open", "--url", deployment.server.url,
                               "--admin-key", key], capture_output=True, text=True, timeout=60, cwd=ROOT)

    refused = dashboard("not-the-key")
    assert refused.returncode == 1 and "401" in refused.stderr, refused
    printed = dashboard(deployment.admin_key)
    assert printed.returncode == 0, printed.stderr
    address = printed.stdout.strip().splitlines()[-1]
    assert address.startswith(f"{deployment.server.url}/_ripple/#key="), printed.stdout
    return address


def send(deployment: Deployment, author: str, body: str) -> str:
    """messages:send over the HTTP API, from outside the page."""
    answer = httpx.post(f"{deployment.server.url}/api/mutation",
                        json={"path": "messages:send", "args": {"author": author, "body": body}}, timeout=10)
    assert answer.status_code == 200 and answer.json()["status"] == "success", answer.text
    return str(answer.json()["value"])


def no_horizontal_overflow(page: Page) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths[0]} px of content in {widths[1]} px"


def run_function(page: Page, path: str, args: str, identity: str | None = None) -> None:
    page.get_by_test_id("nav-functions").click()
    page.locator(f'[data-testid="function-link"][data-path="{path}"]').click()
    expect(page.get_by_test_id("runner").locator("h2")).to_contain_text(path)
    page.get_by_test_id("run-args").fill(args)
    if identity is not None:
        page.get_by_test_id("run-as").select_option("user")
        page.get_by_test_id("run-identity").fill(identity)
    page.get_by_test_id("run-submit").click()


def test_dashboard_shows_live_data_runs_functions_tails_logs_and_uploads(deployment: Deployment, browser: Browser,
                                                                        tmp_path: Path) -> None:
    errors: list[str] = []
    page = open_page(browser, {"width": 1200, "height": 860}, errors)
    expect.set_options(timeout=WAIT_MS)
    try:
        # A wrong key is refused with the server's reason; nothing of the dashboard shows.
        page.goto(f"{deployment.server.url}/_ripple/")
        page.get_by_test_id("login-key").fill("not-the-key")
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("login-error")).to_contain_text("admin key is not valid")
        expect(page.get_by_test_id("shell")).to_be_hidden()
        log_in(page, deployment)

        # Data: the first table opens; a document written elsewhere appears without a reload.
        send(deployment, "amy", "first")
        expect(page.get_by_test_id("table-name")).to_have_text("messages")
        rows = page.get_by_test_id("doc-row")
        expect(rows).to_have_count(1)
        new_id = send(deployment, "bo", f"written by Python {MARKUP}")  # shown as text, never run
        expect(page.locator(f'[data-testid="doc-row"][data-id="{new_id}"]')).to_contain_text(f"written by Python {MARKUP}")
        expect(rows).to_have_count(2)
        expect(rows.first).to_have_attribute("data-id", new_id)  # newest first

        # A filter narrows the live list; removing it gives the list back.
        page.get_by_test_id("filter-field").fill("author")
        page.get_by_test_id("filter-value").fill("amy")
        page.get_by_test_id("filter-form").locator("button[type=submit]").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("first")
        page.get_by_test_id("filter-chip").get_by_role("button").click()
        expect(rows).to_have_count(2)

        # The document: edited (replace) with an Int64; an edit the schema refuses names the field.
        page.locator(f'[data-testid="doc-row"][data-id="{new_id}"]').click()
        expect(page.get_by_test_id("doc-id")).to_have_text(new_id)
        page.get_by_test_id("doc-edit").click()
        page.get_by_test_id("doc-editor").fill('{"author": "bo", "body": "edited", "likes": 7n}')
        page.get_by_test_id("doc-save").click()
        expect(page.get_by_test_id("doc-json")).to_contain_text('"likes": 7n')
        expect(page.locator(f'[data-testid="doc-row"][data-id="{new_id}"]')).to_contain_text("edited")
        if target := os.environ.get("RIPPLE_DASHBOARD_SCREENSHOT"):
            page.screenshot(path=str(ROOT / target))
        page.get_by_test_id("doc-edit").click()
        page.get_by_test_id("doc-editor").fill('{"author": "bo", "body": 5}')
        page.get_by_test_id("doc-save").click()
        expect(page.get_by_test_id("doc-error")).to_contain_text("body")

        # The runner, as the admin: the result and the call's log line.
        run_function(page, "messages:send", '{"author": "dash", "body": "from the runner"}')
        expect(page.get_by_test_id("run-status")).to_have_attribute("data-status", "success")
        expect(page.get_by_test_id("run-result")).to_have_text(re.compile(r'^"\w+"$'))
        expect(page.get_by_test_id("run-logs")).to_contain_text("sending 'from the runner' by dash")
        # As a user; and a function's error shown with its data.
        run_function(page, "messages:whoami", "{}", '{"subject": "riley", "role": "reviewer"}')
        expect(page.get_by_test_id("run-result")).to_have_text('"riley"')
        run_function(page, "messages:refuse", '{"reason": "nope"}')
        expect(page.get_by_test_id("run-status")).to_have_attribute("data-status", "error")
        expect(page.get_by_test_id("run-error-data")).to_contain_text('"reason": "nope"')

        # Schedules: a job scheduled for later is pending, and cancelled from the page.
        job_id = httpx.post(f"{deployment.server.url}/api/mutation", timeout=10,
                            json={"path": "messages:remind", "args": {"body": "later"}}).json()["value"]
        page.get_by_test_id("nav-schedules").click()
        job = page.locator(f'[data-testid="job-row"][data-id="{job_id}"]')
        expect(job).to_have_attribute("data-state", "pending")
        expect(page.get_by_test_id("cron-row")).to_contain_text("every 1 h")
        job.get_by_test_id("job-cancel").click()
        job.get_by_test_id("job-cancel").click()  # the second click confirms
        expect(job).to_have_attribute("data-state", "canceled")

        # Env: a variable added; its value hidden until clicked; the server has it.
        page.get_by_test_id("nav-env").click()
        page.get_by_test_id("env-name").fill("GREETING")
        page.get_by_test_id("env-value").fill("hello there")
        page.get_by_test_id("env-add").click()
        value = page.locator('[data-testid="env-row"][data-name="GREETING"]').get_by_test_id("env-reveal")
        expect(value).not_to_contain_text("hello there")
        value.click()
        expect(value).to_have_text("hello there")
        listed = httpx.get(f"{deployment.server.url}/api/list_environment_variables", timeout=10,
                           headers={"Authorization": f"Convex {deployment.admin_key}"}).json()
        assert listed["environmentVariables"]["GREETING"] == "hello there"

        # Files: a PNG uploaded through an upload URL; its preview loads.
        page.get_by_test_id("nav-files").click()
        page.get_by_test_id("upload-input").set_input_files(str(tiny_png(tmp_path / "dot.png")))
        page.get_by_test_id("upload-submit").click()
        expect(page.get_by_test_id("upload-state")).to_contain_text("Uploaded dot.png")
        stored = page.get_by_test_id("file-row")
        expect(stored).to_have_count(1)
        expect(stored).to_have_attribute("data-content-type", "image/png")
        preview = stored.get_by_test_id("file-preview")
        page.wait_for_function("(img) => img.complete && img.naturalWidth === 3", arg=preview.element_handle(),
                               timeout=WAIT_MS)

        # Logs: the runner's call is in the tail with its line; the failure is marked.
        page.get_by_test_id("nav-logs").click()
        sent = page.locator('[data-testid="log-row"][data-function="messages:send"]').filter(has_text="from the runner")
        expect(sent).to_have_count(1)
        expect(sent).to_have_attribute("data-status", "success")
        expect(page.locator('[data-testid="log-row"][data-function="messages:refuse"]').first).to_have_attribute(
            "data-status", "failure")

        assert page.evaluate("window.__loadedOnce") == "marker", "the page was reloaded"
        assert page.evaluate("window.__injected") is None, "a document's content ran as markup"
        expect(page.get_by_test_id("page-error")).to_be_hidden()
        assert not errors, f"errors in the page: {errors}"
    except BaseException:
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}\nserver log (tail):\n{deployment.server.log()[-4000:]}")
        raise
    finally:
        page.context.close()


def test_dashboard_fits_a_phone(deployment: Deployment, browser: Browser) -> None:
    """At 390x844 the sections fit the width (wide tables scroll in their own box) and work."""
    errors: list[str] = []
    page = open_page(browser, {"width": 390, "height": 844}, errors)
    expect.set_options(timeout=WAIT_MS)
    try:
        for n in range(3):
            send(deployment, "phone", f"a message long enough to need more width than a phone has, number {n}")
        # Signed in by the address `ripple dashboard` prints; the key leaves the address bar at once.
        page.goto(signed_in_address(deployment))
        expect(page.get_by_test_id("shell")).to_be_visible()
        assert "key=" not in page.url and deployment.admin_key not in page.url
        expect(page.get_by_test_id("doc-row")).to_have_count(3)
        no_horizontal_overflow(page)
        page.get_by_test_id("nav-functions").click()  # in the nav row, which scrolls on its own
        page.locator('[data-testid="function-link"][data-path="messages:recent"]').click()
        page.get_by_test_id("run-submit").click()
        expect(page.get_by_test_id("run-result")).to_contain_text("number 2")
        no_horizontal_overflow(page)
        page.get_by_test_id("nav-health").click()
        expect(page.get_by_test_id("health-status")).to_have_attribute("data-status", "ok")
        expect(page.get_by_test_id("loop-restarts")).to_have_text("No background loop has had to be restarted.")
        # The calls chart has a line once two samples of the metrics are 2 s apart.
        expect(page.get_by_test_id("chart-calls").locator("polyline").first).to_have_attribute(
            "points", re.compile(r"\S+,\S+ \S+,\S+"))
        no_horizontal_overflow(page)
        assert not errors, f"errors in the page: {errors}"
    finally:
        page.context.close()


def test_editor_json_round_trips_convex_values(deployment: Deployment, browser: Browser) -> None:
    """The editors' JSON (server/dashboard/dom.js): Int64 as 42n and bytes as {"$bytes": ...} come
    back as the same values, an `n` inside a string stays text, and a bad text is refused with
    the place it is wrong; the runner's forms start from a schema's required fields."""
    errors: list[str] = []
    page = open_page(browser, {"width": 800, "height": 600}, errors)
    try:
        page.goto(f"{deployment.server.url}/_ripple/")
        checked = page.evaluate("""async () => {
          const dom = await import("/_ripple/dashboard/dom.js");
          const { sampleOf } = await import("/_ripple/dashboard/jsonschema.js");
          const value = { big: -(2n ** 63n), bytes: new Uint8Array([0, 255, 7]).buffer, text: "5n and \\"7n\\"",
                          nested: [1.5, { n: 12n }, null, true], nan: NaN };
          const text = dom.toEditText(value);
          const back = dom.parseEditText(text);
          let refused = "";
          try { dom.parseEditText('{"a": 1.5n}'); } catch (e) { refused = e.name; }
          return {
            text,
            big: back.big === value.big,
            bytes: Array.from(new Uint8Array(back.bytes)),
            stringKept: back.text === value.text,
            nested: back.nested[1].n === 12n && back.nested[0] === 1.5,
            nan: Number.isNaN(back.nan),
            loose: [dom.parseLoose("amy"), dom.parseLoose("5"), typeof dom.parseLoose("5n"), dom.parseLoose('"5"')],
            compact: dom.compact({ a: 5n, b: "x", c: new ArrayBuffer(4) }),
            refused,
            sample: ((sample) => ({ ...sample, count: typeof sample.count }))(sampleOf({ type: "object", required: ["name", "when", "opts", "kind", "count"],
                               properties: { name: { type: "string" }, when: { anyOf: [{ type: "null" }, { type: "number" }] },
                                             opts: { $ref: "#/$defs/Opts" }, kind: { enum: ["a", "b"] },
                                             count: { type: "integer", maximum: 9223372036854775807 },
                                             extra: { type: "string" } },
                               $defs: { Opts: { type: "object", required: ["on"], properties: { on: { type: "boolean" } } } } })),
          };
        }""")
        assert '"big": -9223372036854775808n' in checked["text"]
        assert checked["big"] and checked["stringKept"] and checked["nested"] and checked["nan"]
        assert checked["bytes"] == [0, 255, 7]
        assert checked["loose"] == ["amy", 5, "bigint", "5"]
        assert checked["compact"] == '{a: 5n, b: "x", c: bytes(4)}'
        assert checked["refused"] == "SyntaxError"
        assert checked["sample"] == {"name": "", "when": 0, "opts": {"on": False}, "kind": "a", "count": "bigint"}
        assert not errors, f"errors in the page: {errors}"
    finally:
        page.context.close()


def test_runner_finds_log_lines_in_the_stream_under_ripple_serve(production: Deployment, browser: Browser) -> None:
    """`ripple serve` gives clients no log lines; the runner shows the call's lines from the log
    stream instead (the entry of that function, at or after the call's start)."""
    errors: list[str] = []
    page = open_page(browser, {"width": 1000, "height": 800}, errors)
    expect.set_options(timeout=WAIT_MS)
    try:
        log_in(page, production)
        send(production, "earlier", "a call before the runner's")  # in the stream, not the one shown
        run_function(page, "messages:send", '{"author": "prod", "body": "in production"}')
        expect(page.get_by_test_id("run-status")).to_have_attribute("data-status", "success")
        expect(page.get_by_test_id("run-logs")).to_have_text("[LOG] sending 'in production' by prod")
        assert not errors, f"errors in the page: {errors}"
    finally:
        page.context.close()
