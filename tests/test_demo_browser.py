"""The demo page (public/) in headless Chromium against a real `ripple dev` of the example app.

Two browser contexts, a creator and a reviewer, go through the whole video workflow with real
files (small MP4s made here with PyAV) and real processing, and every change reaches the other
page live: no page is ever reloaded (a marker set on `window` at load must survive to the end).
On failure, screenshots of both pages are saved under the test's tmp_path and their paths printed.

Set RIPPLE_DEMO_SCREENSHOT=docs/images/demo.png to refresh the documentation's screenshot from a
run (the creator's page at the end).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pytest
from playwright.sync_api import Browser, Page, expect

from conftest import ROOT, ServerProcess, drop_schemas, free_port, launch

pytestmark = pytest.mark.e2e

PAGE_SIZE = 2
WAIT_MS = 20_000  # the most any expected change may take to show (processing included)

# Records every status a card shows, in order, per video id: a status that lasts a few ms is
# still seen, and the order says the page followed the workflow.
STATUS_RECORDER = """
(listId) => {
  const list = document.querySelector(`[data-testid="${listId}"]`);
  window.__statuses = window.__statuses || {};
  const note = (card) => {
    const id = card.dataset.videoId, status = card.dataset.status;
    if (!id || !status) return;
    const seen = (window.__statuses[id] = window.__statuses[id] || []);
    if (seen[seen.length - 1] !== status) seen.push(status);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") note(r.target);
      for (const n of r.addedNodes || []) if (n.dataset) note(n);
    }
  }).observe(list, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"] });
}
"""


def make_video(path: Path, seconds: int, chroma: tuple[int, int]) -> Path:
    """A real H.264 MP4 of `seconds` seconds, 64x64 at 10 fps, for the server to process: a light
    bar sweeps across a background of one colour (`chroma`: its U and V)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * 10):
            frame = av.VideoFrame(64, 64, "yuv420p")
            bar = (i * 3) % 56
            for index, plane in enumerate(frame.planes):
                if index == 0:  # luma: a gradient with the bar
                    row = bytes(235 if bar <= x < bar + 8 else 60 + x * 2 for x in range(plane.width))
                else:  # chroma: the colour, scaled to the plane's half width
                    row = bytes([chroma[index - 1]] * plane.width)
                row += bytes(plane.line_size - plane.width)
                plane.update(row * plane.height)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@dataclass
class Demo:
    """The two pages, and what the test checks at the end of any run."""

    base: str
    creator: Page
    reviewer: Page
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def watch(self, page: Page, who: str) -> None:
        page.on("dialog", lambda d: (self.dialogs.append(f"{who}: {d.message}"), d.dismiss()))
        page.on("pageerror", lambda e: self.page_errors.append(f"{who}: {e}"))
        page.on("console", lambda m: self.console.append(f"{who} [{m.type}] {m.text}"))

    def open(self, page: Page) -> None:
        page.goto(f"{self.base}/?pageSize={PAGE_SIZE}")
        page.evaluate("window.__loadedOnce = 'marker'")
        expect(page.get_by_test_id("connection-state")).to_have_attribute("data-state", "connected")

    def assert_never_reloaded(self) -> None:
        for page in (self.creator, self.reviewer):
            assert page.evaluate("window.__loadedOnce") == "marker", "a page was reloaded"


def card(page: Page, list_id: str, caption: str) -> Any:
    kind = "video-card" if list_id == "my-videos" else "review-card"
    return page.get_by_test_id(list_id).get_by_test_id(kind).filter(has_text=caption)


def sign_in(page: Page, preset: str, view: str, name: str) -> None:
    page.get_by_test_id(f"signin-{preset}").click()
    expect(page.get_by_test_id(view)).to_be_visible()
    expect(page.get_by_test_id("current-user")).to_contain_text(name)


def upload(page: Page, campaign: str, video: Path, caption: str, hashtags: str = "") -> None:
    """Upload through the form; returns once the page says the upload is done (100%)."""
    page.get_by_test_id("upload-campaign").select_option(label=campaign)
    page.get_by_test_id("upload-file").set_input_files(str(video))
    page.get_by_test_id("upload-caption").fill(caption)
    page.get_by_test_id("upload-hashtags").fill(hashtags)
    page.get_by_test_id("upload-submit").click()
    expect(page.get_by_test_id("upload-progress")).to_have_attribute("data-value", "100")
    expect(page.get_by_test_id("upload-progress-text")).to_contain_text("uploaded")
    expect(page.get_by_test_id("upload-error")).to_be_hidden()


def statuses(page: Page, video_id: str) -> list[str]:
    return list(page.evaluate("(id) => (window.__statuses || {})[id] || []", video_id))


def is_in_workflow_order(seen: list[str], order: list[str]) -> bool:
    """`seen` is `order` with some steps possibly too quick to be shown, none out of order."""
    positions = [order.index(s) for s in seen if s in order]
    return len(positions) == len(seen) and positions == sorted(positions)


def assert_processed(page: Page, item: Any, seconds: float) -> None:
    """The card shows a loaded thumbnail and the file's duration."""
    thumb = item.get_by_test_id("video-thumbnail")
    expect(thumb).to_be_visible()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle(), timeout=WAIT_MS)
    text = item.get_by_test_id("video-duration").inner_text()
    match = re.fullmatch(r"(\d+\.\d) s", text)
    assert match and abs(float(match.group(1)) - seconds) <= 0.3, f"duration shown as {text!r}, expected ~{seconds} s"


def run_workflow(demo: Demo, videos: dict[str, Path], bad_file: Path, broken_file: Path) -> None:
    creator, reviewer = demo.creator, demo.reviewer
    demo.open(reviewer)
    demo.open(creator)

    # The reviewer creates a campaign; the creator's picker has it.
    sign_in(reviewer, "riley", "reviewer-view", "Riley")
    reviewer.get_by_test_id("campaign-name").fill("Summer Launch")
    reviewer.get_by_test_id("campaign-brand").fill("Acme")
    reviewer.get_by_test_id("campaign-submit").click()
    expect(reviewer.get_by_test_id("campaign-created")).to_contain_text("Summer Launch")
    expect(reviewer.get_by_test_id("review-empty")).to_be_visible()
    reviewer.evaluate(STATUS_RECORDER, "review-queue")

    sign_in(creator, "casey", "creator-view", "Casey")
    creator.evaluate(STATUS_RECORDER, "my-videos")
    expect(creator.get_by_test_id("upload-campaign").locator("option", has_text="Summer Launch")).to_have_count(1)

    # A file that is not a video is refused by videos:createVideo; the page says why, inline.
    creator.get_by_test_id("upload-campaign").select_option(label="Summer Launch (Acme)")
    creator.get_by_test_id("upload-file").set_input_files(str(bad_file))
    creator.get_by_test_id("upload-submit").click()
    expect(creator.get_by_test_id("upload-error")).to_be_visible()
    expect(creator.get_by_test_id("upload-error")).not_to_be_empty()
    expect(creator.get_by_test_id("my-videos-empty")).to_be_visible()

    # Upload: progress to 100%, then the status moves on live to under_review, processed.
    upload(creator, "Summer Launch (Acme)", videos["first"], "First cut")
    mine = card(creator, "my-videos", "First cut")
    expect(mine).to_have_attribute("data-status", "under_review", timeout=WAIT_MS)
    video_id = mine.get_attribute("data-video-id")
    assert video_id
    assert_processed(creator, mine, 2.0)
    first_run = statuses(creator, video_id)
    assert first_run[-1] == "under_review" and "processing" in first_run, first_run
    assert is_in_workflow_order(first_run, ["uploaded", "processing", "under_review"]), first_run

    # The reviewer's queue got it live; they ask for changes.
    queued = card(reviewer, "review-queue", "First cut")
    expect(queued).to_have_attribute("data-status", "under_review", timeout=WAIT_MS)
    expect(queued.get_by_test_id("review-player")).to_have_attribute("src", re.compile(r"/api/storage/"))
    expect(queued.get_by_test_id("review-creator")).to_contain_text("Casey")
    queued.get_by_test_id("review-request-changes").click()  # without a note: refused on the page
    expect(queued.get_by_test_id("review-error")).to_contain_text("note")
    queued.get_by_test_id("review-note").fill("Show the product in the first second")
    queued.get_by_test_id("review-request-changes").click()
    expect(queued).to_have_count(0)  # it left the under_review queue

    # The creator sees it live, with the note, and resubmits a new cut.
    expect(mine).to_have_attribute("data-status", "changes_needed")
    expect(mine.get_by_test_id("video-notes")).to_contain_text("Show the product in the first second")
    mine.get_by_test_id("video-resubmit-file").set_input_files(str(videos["second"]))
    mine.get_by_test_id("video-resubmit").click()
    expect(mine.get_by_test_id("video-resubmit-progress")).to_have_attribute("data-value", "100")
    expect(mine).to_have_attribute("data-status", "under_review", timeout=WAIT_MS)
    expect(mine.get_by_test_id("video-duration")).to_have_text("3.0 s", timeout=WAIT_MS)  # the new file, processed
    whole = statuses(creator, video_id)
    second_run = whole[whole.index("changes_needed") + 1:]
    assert second_run and second_run[-1] == "under_review", whole
    assert is_in_workflow_order(second_run, ["uploaded", "processing", "under_review"]), whole

    # Back in the queue, live; approved; the creator sees it.
    expect(queued).to_have_attribute("data-status", "under_review", timeout=WAIT_MS)
    queued.get_by_test_id("review-note").fill("Great, ship it")
    queued.get_by_test_id("review-approve").click()
    expect(mine).to_have_attribute("data-status", "approved")
    expect(mine.get_by_test_id("video-notes")).to_contain_text("Great, ship it")
    expect(mine.get_by_test_id("video-resubmit-form")).to_be_hidden()

    # The reviewer searches the queue for a hashtag no video has yet: nothing matches.
    search = reviewer.get_by_test_id("review-search")
    search.fill("#beach")
    expect(reviewer.get_by_test_id("review-empty")).to_contain_text("No videos match")

    # Three more uploads, the first with that hashtag: it joins the search results live once
    # processed. Cleared, the search gives the queue back, all three in it: both lists now hold
    # more than a page.
    for n, hashtags in ((1, "#Beach #sun"), (2, "#city"), (3, "")):
        upload(creator, "Summer Launch (Acme)", videos["first"], f"Extra {n}", hashtags)
    found = reviewer.get_by_test_id("review-queue").get_by_test_id("review-card")
    expect(card(reviewer, "review-queue", "Extra 1")).to_have_attribute("data-status", "under_review", timeout=WAIT_MS)
    expect(found).to_have_count(1)
    search.fill("")
    for n in (1, 2, 3):
        expect(card(reviewer, "review-queue", f"Extra {n}")).to_have_attribute("data-status", "under_review",
                                                                               timeout=WAIT_MS)
    # Typed key by key, the start of the hashtag finds the matching video, and only it.
    search.press_sequentially("#bea", delay=40)
    expect(card(reviewer, "review-queue", "Extra 2")).to_have_count(0)
    expect(found).to_have_count(1)
    expect(card(reviewer, "review-queue", "Extra 1")).to_contain_text("#beach")
    search.fill("")
    expect(card(creator, "my-videos", "First cut")).to_have_attribute("data-status", "approved")

    # A file that claims to be an MP4 but is not a video fails processing; the card says why.
    upload(creator, "Summer Launch (Acme)", broken_file, "Broken file")
    broken = card(creator, "my-videos", "Broken file")
    expect(broken).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    expect(broken.get_by_test_id("video-failure")).to_contain_text("not a playable video")
    expect(broken.get_by_test_id("video-resubmit-form")).to_be_visible()

    # A fresh subscription starts with one page and loads more on demand. The creator signs out
    # and in again (no reload); the reviewer switches the status filter and back.
    creator.get_by_test_id("signout").click()
    expect(creator.get_by_test_id("signin")).to_be_visible()
    sign_in(creator, "casey", "creator-view", "Casey")
    check_load_more(creator, "my-videos", "video-card", "my-videos-more", total=5)

    reviewer.get_by_test_id("review-filter-status").select_option("approved")
    expect(card(reviewer, "review-queue", "First cut")).to_have_attribute("data-status", "approved")
    reviewer.get_by_test_id("review-filter-status").select_option("under_review")
    check_load_more(reviewer, "review-queue", "review-card", "review-more", total=3)

    demo.assert_never_reloaded()
    assert not demo.dialogs, f"the page used dialogs: {demo.dialogs}"
    assert not demo.page_errors, f"uncaught errors in the page: {demo.page_errors}"


def check_load_more(page: Page, list_id: str, kind: str, button_id: str, total: int) -> None:
    """The list shows one page, then all `total` items after clicking "Load more" until it goes."""
    items = page.get_by_test_id(list_id).get_by_test_id(kind)
    more = page.get_by_test_id(button_id)
    expect(items).to_have_count(PAGE_SIZE)
    expect(more).to_be_enabled()
    for _ in range(total):  # a page holds at least one item: no more clicks than items
        more.click()
        page.wait_for_function("(b) => b.hidden || !b.disabled", arg=more.element_handle(), timeout=WAIT_MS)
        if more.is_hidden():
            break
    expect(more).to_be_hidden()
    expect(items).to_have_count(total)


@pytest.fixture
def demo_server(pg_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """`ripple dev` of a copy of the repository's example app (so .ripple/ is not written into the
    checkout), on its own PostgreSQL schema, with the processing service refusing each video's
    first job (a retry later it succeeds): `processing` then lasts long enough to be seen."""
    app = tmp_path / "app"
    app.mkdir()
    for name in ("schema.py", "dev.env"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, app / name)
    for name in ("functions", "public"):
        shutil.copytree(ROOT / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    schema = "t_" + secrets.token_hex(6)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL", "PROCESSING_"))}
    cmd = [sys.executable, "-m", "server.cli", "dev", "--port", str(port), "--dir", str(app),
           "--database-url", pg_url, "--db-schema", schema]
    server = launch(cmd, port, tmp_path / "server.log", env)
    try:
        ripple_env = subprocess.run([sys.executable, "-m", "server.cli", "env", "set", "PROCESSING_FAIL_FIRST", "1",
                                     "--url", server.url, "--dir", str(app)],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert ripple_env.returncode == 0, ripple_env.stdout + ripple_env.stderr
        yield server
    finally:
        server.stop()
        drop_schemas(pg_url, schema)


def test_creator_and_reviewer_pages_follow_the_workflow_live(demo_server: ServerProcess, browser: Browser,
                                                             tmp_path: Path) -> None:
    videos = {"first": make_video(tmp_path / "first.mp4", 2, (170, 100)),  # blue
              "second": make_video(tmp_path / "second.mp4", 3, (90, 180))}  # orange
    bad_file = tmp_path / "notes.txt"
    bad_file.write_text("not a video\n")
    broken_file = tmp_path / "broken.mp4"  # sent as video/mp4, refused by the processing
    broken_file.write_bytes(b"not a video either\n" * 64)
    contexts = [browser.new_context(viewport={"width": 1000, "height": 900}) for _ in range(2)]
    for context in contexts:
        context.set_default_timeout(10_000)
    demo = Demo(demo_server.url, contexts[0].new_page(), contexts[1].new_page())
    expect.set_options(timeout=10_000)
    demo.watch(demo.creator, "creator")
    demo.watch(demo.reviewer, "reviewer")
    try:
        run_workflow(demo, videos, bad_file, broken_file)
        if target := os.environ.get("RIPPLE_DEMO_SCREENSHOT"):
            demo.creator.locator("body").screenshot(path=str(ROOT / target))  # the content, no blank below
    except BaseException:
        shots = []
        for who, page in (("creator", demo.creator), ("reviewer", demo.reviewer)):
            shot = tmp_path / f"{who}.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
                shots.append(str(shot))
            except Exception as exc:  # the page may be gone; the failure itself matters more
                shots.append(f"{who}: no screenshot ({exc})")
        print("demo page screenshots:", *shots, sep="\n  ")
        print("browser console (last 40 lines):", *demo.console[-40:], sep="\n  ")
        print("server log (tail):", demo_server.log()[-4000:], sep="\n")
        raise
    finally:
        for context in contexts:
            context.close()
