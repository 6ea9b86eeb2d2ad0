"""The example app (schema.py, functions/) end to end, as its users drive it: one `ripple serve`
of the repository root for the module, signed-in creators and reviewers (tokens of the test OIDC
issuer, tests/oidc_issuer.py, configured the way Clerk is: CLERK_ISSUER_URL) on our Python SDK,
real videos made here with PyAV, and the app's own processing service (functions/
processing_service.py) decoding them, uploading thumbnails and calling the signed webhook back.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import io
import json
import secrets
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from standardwebhooks import Webhook

from client_sdk import ConvexError, FunctionError, RippleClient
from server import Identity
from server.config import SchedulerConfig
from server.core.documents import DatabaseWriter
from server.core.scheduler.loop import Scheduler
from server.core.transaction import Transaction

from conftest import ROOT, ServerProcess, Watcher, module_server, open_runtime, until
from oidc_issuer import OidcIssuer

pytestmark = pytest.mark.e2e
ADMIN_KEY = "k-example-app"
SERVICE_KEY = "test-service-key"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
PAGE = {"numItems": 20, "cursor": None}


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    issuer = OidcIssuer()
    try:
        yield issuer
    finally:
        issuer.close()


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory, issuer: OidcIssuer) -> Iterator[ServerProcess]:
    env = {"CLERK_ISSUER_URL": issuer.url, "RIPPLE_ADMIN_KEY": ADMIN_KEY}
    yield from module_server(pg_url, tmp_path_factory, "serve", ROOT, unset=("RIPPLE_DEV_AUTH_ISSUER",), env=env)


def set_env(server: ServerProcess, **values: str | None) -> None:
    changes = [{"name": name, "value": value} for name, value in values.items()]
    r = httpx.post(f"{server.url}/api/update_environment_variables", json={"changes": changes},
                   headers={"Authorization": f"Convex {ADMIN_KEY}"})
    assert r.status_code == 200, r.text


@pytest.fixture(autouse=True)
def processing_env(server: ServerProcess) -> None:
    """Every test starts from a working service with quick retries (tests change them). The
    service and callback URLs are not set: the app derives them from the built-in CONVEX_SITE_URL,
    as it does under `ripple dev`."""
    set_env(server, PROCESSING_SERVICE_URL=None, PROCESSING_CALLBACK_URL=None, PROCESSING_SERVICE_KEY=SERVICE_KEY,
            PROCESSING_WEBHOOK_SECRET=WEBHOOK_SECRET, PROCESSING_RETRY_BASE_MS="20", PROCESSING_RETRY_CAP_MS="100",
            PROCESSING_FAIL_FIRST=None, PROCESSING_MAX_ATTEMPTS=None)


class Users:
    """Signed-in SDK clients: `await users.creator("casey")`, `await users.reviewer("riley")`."""

    def __init__(self, server: ServerProcess, issuer: OidcIssuer) -> None:
        self.server, self.issuer, self.clients = server, issuer, []  # type: ignore[var-annotated]
        self.run = uuid.uuid4().hex[:8]  # subjects of their own for each test

    async def client(self, sub: str | None, **claims: Any) -> RippleClient:
        token = None if sub is None else self.issuer.token(f"{sub}-{self.run}", name=sub.title(), **claims)
        client = RippleClient(self.server.url, token=token)
        self.clients.append(client)
        return client

    async def creator(self, sub: str) -> RippleClient:
        return await self.client(sub)

    async def reviewer(self, sub: str) -> RippleClient:
        return await self.client(sub, role="reviewer")

    def token_identifier(self, sub: str) -> str:
        return f"{self.issuer.url}|{sub}-{self.run}"


@pytest.fixture
async def users(server: ServerProcess, issuer: OidcIssuer) -> AsyncIterator[Users]:
    users = Users(server, issuer)
    try:
        yield users
    finally:
        for client in users.clients:
            await client.close()


def make_video(seconds: float = 2.0, size: int = 64, fps: int = 10) -> bytes:
    """A real MP4 (MPEG-4 part 2, which every FFmpeg build encodes) whose frames brighten."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame(size, size, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([(i * 9) % 256]) * plane.buffer_size)
            frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


async def upload(client: RippleClient, data: bytes, content_type: str = "video/mp4") -> str:
    url = await client.mutation("videos:generateUploadUrl")
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(url, content=data, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    return str(r.json()["storageId"])


async def new_campaign(reviewer: RippleClient, name: str | None = None) -> str:
    return str(await reviewer.mutation("campaigns:create", {"name": name or f"Launch {uuid.uuid4().hex[:6]}",
                                                            "brand": "Acme"}))


async def submit(creator: RippleClient, campaign: str, data: bytes | None = None, **fields: Any) -> str:
    storage_id = await upload(creator, make_video() if data is None else data)
    return str(await creator.mutation("videos:createVideo", {"campaignId": campaign, "storageId": storage_id, **fields}))


async def settled(client: RippleClient, video_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
    """The video once its status is one of `statuses` (read through a live query)."""
    async def wait() -> dict[str, Any]:
        async for video in client.subscribe("videos:get", {"id": video_id}):
            if video is not None and video["status"] in statuses:
                return dict(video)
        raise AssertionError("subscription ended")

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"video not {statuses}: {await client.query('videos:get', {'id': video_id})}") from None


async def refused(call: Any, code: str) -> str:
    with pytest.raises(ConvexError) as err:
        await call
    assert err.value.data["code"] == code, err.value.data
    return str(err.value.data["message"])


async def test_signed_out_callers_and_roles(server: ServerProcess, users: Users) -> None:
    anonymous, casey, riley = await users.client(None), await users.creator("casey"), await users.reviewer("riley")
    assert await anonymous.query("users:me") is None
    assert await casey.query("users:me") == {"tokenIdentifier": users.token_identifier("casey"), "subject": f"casey-{users.run}",
                                             "name": "Casey", "email": None, "role": "creator"}
    assert (await riley.query("users:me"))["role"] == "reviewer"

    await refused(anonymous.query("campaigns:list"), "UNAUTHENTICATED")
    await refused(anonymous.query("videos:listMine", {"paginationOpts": PAGE}), "UNAUTHENTICATED")
    await refused(anonymous.mutation("videos:generateUploadUrl"), "UNAUTHENTICATED")
    await refused(anonymous.mutation("campaigns:create", {"name": "x", "brand": "y"}), "UNAUTHENTICATED")
    await refused(casey.mutation("campaigns:create", {"name": "x", "brand": "y"}), "FORBIDDEN")
    await refused(casey.query("videos:listForReview", {"paginationOpts": PAGE}), "FORBIDDEN")
    await refused(riley.mutation("videos:generateUploadUrl"), "FORBIDDEN")

    # The reviewer role granted in the app, by an administrator (what `ripple run users:addReviewer` does).
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.url}/api/mutation", headers={"Authorization": f"Convex {ADMIN_KEY}"},
                            json={"path": "users:addReviewer", "args": {"tokenIdentifier": users.token_identifier("casey")}})
    assert r.json()["value"] is True, r.text
    assert (await casey.query("users:me"))["role"] == "reviewer"
    assert isinstance(await new_campaign(casey), str)

    # Over plain HTTP, a token of no configured issuer is refused (401), and no token is signed out.
    async with httpx.AsyncClient(base_url=server.url) as http:
        other = OidcIssuer()
        try:
            r = await http.post("/api/query", json={"path": "users:me", "args": {}},
                                headers={"Authorization": f"Bearer {other.token('mallory')}"})
        finally:
            other.close()
        assert r.status_code == 401 and "no auth provider has the token's issuer" in r.json()["message"]


async def test_upload_process_review_resubmit_approve(server: ServerProcess, users: Users) -> None:
    casey, sam, riley = await users.creator("casey"), await users.creator("sam"), await users.reviewer("riley")
    campaign = await new_campaign(riley)
    mine = Watcher(casey, "videos:listMine", {"paginationOpts": PAGE})
    try:
        video_id = await submit(casey, campaign, caption="First cut", hashtags=["#Summer"], platformSelections=["tiktok"])
        video = await settled(casey, video_id, "under_review", "failed")
        assert video["status"] == "under_review", video
        assert [h["status"] for h in video["approvalHistory"]] == ["uploaded", "processing", "under_review"]
        assert abs(video["duration"] - 2.0) < 0.15 and (video["width"], video["height"]) == (64, 64)
        assert video["hashtags"] == ["summer"] and video["creatorId"] == users.token_identifier("casey")
        async with httpx.AsyncClient() as http:
            thumbnail = await http.get(video["thumbnailUrl"], follow_redirects=True)
            played = await http.get(video["url"], follow_redirects=True)
        assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"
        assert thumbnail.headers["content-type"] == "image/jpeg"
        assert played.content[4:8] == b"ftyp"
        # The live list saw the video arrive and move on.
        await until(lambda: mine.latest and mine.latest["page"] and mine.latest["page"][0]["status"] == "under_review")
        seen = {v["page"][0]["status"] for v in mine.values if v["page"]}
        assert "under_review" in seen and len(seen) >= 2, seen
    finally:
        await mine.stop()

    # Another creator neither sees nor lists it, nor reviews it; the creator cannot review it either.
    assert await sam.query("videos:get", {"id": video_id}) is None
    assert (await sam.query("videos:listMine", {"paginationOpts": PAGE}))["page"] == []
    await refused(sam.mutation("videos:resubmit", {"videoId": video_id, "storageId": await upload(sam, make_video())}),
                  "VIDEO_NOT_FOUND")
    await refused(casey.mutation("videos:approve", {"videoId": video_id}), "FORBIDDEN")

    # The review queue, all of it and by campaign.
    queue = await riley.query("videos:listForReview", {"paginationOpts": PAGE, "campaignId": campaign})
    assert [v["_id"] for v in queue["page"]] == [video_id]
    assert video_id in [v["_id"] for v in (await riley.query("videos:listForReview", {"paginationOpts": PAGE}))["page"]]
    assert (await riley.query("videos:listForReview", {"paginationOpts": PAGE, "campaignId": campaign,
                                                       "status": "approved"}))["page"] == []

    await riley.mutation("videos:requestChanges", {"videoId": video_id, "note": "Show the product earlier"})
    video = await casey.query("videos:get", {"id": video_id})
    assert video["status"] == "changes_needed"
    assert video["approvalHistory"][-1] == {**video["approvalHistory"][-1], "status": "changes_needed",
                                            "reviewerId": users.token_identifier("riley"), "note": "Show the product earlier"}
    await refused(riley.mutation("videos:approve", {"videoId": video_id}), "WRONG_STATUS")
    old_thumbnail = video["thumbnailUrl"]

    # The creator answers with a new, 3-second cut: processed again, in a new round.
    await casey.mutation("videos:resubmit", {"videoId": video_id, "storageId": await upload(casey, make_video(3.0))})
    video = await settled(casey, video_id, "under_review", "failed")
    assert video["status"] == "under_review" and abs(video["duration"] - 3.0) < 0.15, video
    assert video["processingRound"] == 2 and video["thumbnailUrl"] != old_thumbnail
    async with httpx.AsyncClient() as http:
        assert (await http.get(old_thumbnail, follow_redirects=True)).status_code == 404  # the replaced one is deleted

    await riley.mutation("videos:approve", {"videoId": video_id, "note": "Great"})
    assert (await casey.query("videos:listMine", {"paginationOpts": PAGE, "status": "approved"}))["page"][0]["_id"] == video_id
    assert [h["status"] for h in (await casey.query("videos:get", {"id": video_id}))["approvalHistory"]] == [
        "uploaded", "processing", "under_review", "changes_needed", "uploaded", "processing", "under_review", "approved"]

    # After approval: posting, engagement, payment.
    await refused(casey.mutation("videos:updateEngagement", {"videoId": video_id, "views": 1, "likes": 0, "comments": 0,
                                                             "shares": 0}), "NOT_POSTED")
    await casey.mutation("videos:markPosted", {"videoId": video_id})
    await casey.mutation("videos:updateEngagement", {"videoId": video_id, "views": 100, "likes": 7, "comments": 2, "shares": 1})
    await refused(casey.mutation("videos:setPaymentStatus", {"videoId": video_id, "paymentStatus": "paid"}), "FORBIDDEN")
    await riley.mutation("videos:setPaymentStatus", {"videoId": video_id, "paymentStatus": "paid"})
    video = await riley.query("videos:get", {"id": video_id})
    assert video["engagementMetrics"]["views"] == 100 and video["paymentStatus"] == "paid" and video["postCreatedAt"]


async def test_files_that_are_not_videos(server: ServerProcess, users: Users) -> None:
    casey, riley = await users.creator("casey"), await users.reviewer("riley")
    campaign = await new_campaign(riley)
    text = await upload(casey, b"hello, not a video", "text/plain")
    message = await refused(casey.mutation("videos:createVideo", {"campaignId": campaign, "storageId": text}), "INVALID_FILE")
    assert "text/plain" in message and "video/mp4" in message
    assert (await casey.query("videos:listMine", {"paginationOpts": PAGE}))["page"] == []

    # Declared a video, but not one: the service cannot decode it and the video fails with the reason.
    video_id = await submit(casey, campaign, b"\x00\x00\x00\x18ftypmp42" + secrets.token_bytes(2000))
    video = await settled(casey, video_id, "failed", "under_review")
    assert video["status"] == "failed" and video["failureReason"].startswith("the file is not a playable video: "), video


async def test_transient_failures_are_retried(server: ServerProcess, users: Users) -> None:
    set_env(server, PROCESSING_FAIL_FIRST="2")
    casey, riley = await users.creator("casey"), await users.reviewer("riley")
    video_id = await submit(casey, await new_campaign(riley))
    video = await settled(casey, video_id, "under_review", "failed")
    assert video["status"] == "under_review", video
    assert video["processingAttempts"] == 3 and video["lastError"].startswith("503 Service Unavailable")


async def test_processing_gives_up_after_max_attempts(server: ServerProcess, users: Users) -> None:
    set_env(server, PROCESSING_FAIL_FIRST="1000", PROCESSING_MAX_ATTEMPTS="3")
    casey, riley = await users.creator("casey"), await users.reviewer("riley")
    video_id = await submit(casey, await new_campaign(riley))
    video = await settled(casey, video_id, "failed", "under_review")
    assert video["status"] == "failed" and video["processingAttempts"] == 3
    assert video["failureReason"] == "the processing service failed 3 times; last: 503 Service Unavailable"

    # The service refuses a job without its key; a refusal (a 4xx) is not retried.
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.url}/processing/jobs", json={}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    campaign = (await casey.query("videos:get", {"id": video_id}))["campaignId"]
    set_env(server, PROCESSING_FAIL_FIRST=None, PROCESSING_SERVICE_URL=f"{server.url}/no-such-route")
    video_id = await submit(casey, campaign)
    video = await settled(casey, video_id, "failed", "under_review")
    assert video["processingAttempts"] == 1 and video["failureReason"].startswith(
        "the processing service refused the job: 404 Not Found"), video


class Capture:
    """A stand-in callback receiver on loopback: keeps each delivery (headers and body), answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                capture.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()  # close() waits a poll

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_the_webhook_refuses_forgeries_and_applies_a_delivery_once(server: ServerProcess, users: Users) -> None:
    casey, riley = await users.creator("casey"), await users.reviewer("riley")
    capture = Capture()
    try:
        set_env(server, PROCESSING_CALLBACK_URL=capture.url)  # results come to the test instead
        await _forgeries_replays_and_late_results(server, casey, riley, capture)
    finally:
        capture.close()


def signed(body: bytes, msg_id: str | None = None) -> dict[str, str]:
    """Standard Webhooks headers for `body`, signed with the deployment's secret (as the service signs)."""
    now, msg_id = datetime.now(UTC), msg_id or f"msg_{uuid.uuid4().hex}"
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(WEBHOOK_SECRET).sign(msg_id, now, body.decode())}


async def _forgeries_replays_and_late_results(server: ServerProcess, casey: RippleClient, riley: RippleClient,
                                              capture: Capture) -> None:
    video_id = await submit(casey, await new_campaign(riley))
    await settled(casey, video_id, "processing")
    await until(lambda: capture.deliveries)
    (headers, body) = capture.deliveries[0]
    result = json.loads(body)
    assert result["videoId"] == video_id and result["round"] == 1 and abs(result["duration"] - 2.0) < 0.15
    genuine = {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    hook = f"{server.url}/webhooks/processing"

    async with httpx.AsyncClient() as http:
        forged = {**result, "duration": 999.0}
        r = await http.post(hook, content=json.dumps(forged), headers={**genuine, "Content-Type": "application/json"})
        assert r.status_code == 401 and r.json()["code"] == "WebhookVerificationFailed"
        r = await http.post(hook, content=body, headers={**genuine, "webhook-signature": "v1," + base64.b64encode(
            secrets.token_bytes(32)).decode()})
        assert r.status_code == 401
        r = await http.post(hook, content=body)  # unsigned
        assert r.status_code == 401
        assert (await casey.query("videos:get", {"id": video_id}))["status"] == "processing"

        r = await http.post(hook, content=body, headers=genuine)
        assert r.status_code == 200 and r.json() == {"duplicate": False, "outcome": "applied: under_review"}
        video = await casey.query("videos:get", {"id": video_id})
        assert video["status"] == "under_review" and video["thumbnailStorageId"] == result["thumbnailStorageId"]

        r = await http.post(hook, content=body, headers=genuine)  # replayed
        assert r.status_code == 200 and r.json()["duplicate"] is True
        assert await casey.query("videos:get", {"id": video_id}) == video

        # Resubmitted: round 2 is processing when a (newly signed) result of round 1 arrives late.
        await riley.mutation("videos:requestChanges", {"videoId": video_id, "note": "Shorter"})
        await casey.mutation("videos:resubmit", {"videoId": video_id, "storageId": await upload(casey, make_video(1.0))})
        await settled(casey, video_id, "processing")
        await until(lambda: len(capture.deliveries) == 2)
        late = json.dumps({**result, "thumbnailStorageId": None}).encode()
        r = await http.post(hook, content=late, headers=signed(late))
        assert r.json() == {"duplicate": False, "outcome": "ignored: a result of round 1; the video is in round 2"}
        assert (await casey.query("videos:get", {"id": video_id}))["status"] == "processing"
        headers, body = capture.deliveries[1]
        r = await http.post(hook, content=body, headers={k: headers[k] for k in genuine})
        assert r.json()["outcome"] == "applied: under_review"
        video = await casey.query("videos:get", {"id": video_id})
        assert video["processingRound"] == 2 and abs(video["duration"] - 1.0) < 0.15


async def search(client: RippleClient, query: str, **args: Any) -> list[str]:
    """The ids videos:searchForReview answers, in order (one page of 20)."""
    page = await client.query("videos:searchForReview", {"query": query, "paginationOpts": PAGE, **args})
    return [v["_id"] for v in page["page"]]


async def test_reviewers_search_captions_and_hashtags_live(server: ServerProcess, users: Users) -> None:
    casey, riley = await users.creator("casey"), await users.reviewer("riley")
    campaign, other_campaign = await new_campaign(riley), await new_campaign(riley)
    # Words of this test's own: the other tests' videos are on the same server.
    word, tag = f"w{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}"

    # A live search of the review queue sees a matching video arrive once it is processed, and
    # never shows one that does not match.
    live = Watcher(riley, "videos:searchForReview", {"query": f"#{tag}", "paginationOpts": PAGE})
    try:
        beach = await submit(casey, campaign, caption=f"Beach {word} at sunset", hashtags=[f"#{tag.upper()}", "#sun"])
        other = await submit(casey, campaign, caption="Another clip", hashtags=["#winter"])
        await settled(casey, beach, "under_review")
        await settled(casey, other, "under_review")
        await until(lambda: live.latest and [v["_id"] for v in live.latest["page"]] == [beach], timeout=20)
        assert all(other not in [v["_id"] for v in value["page"]] for value in live.values)
        assert live.values[0]["page"] == []  # the search started before the video existed
    finally:
        await live.stop()
    studio = await submit(casey, other_campaign, caption=f"Studio {word}")
    await settled(casey, studio, "under_review")

    # By a caption word, by hashtag with or without '#' in any case, by the start of the last word.
    assert set(await search(riley, word)) == {beach, studio}
    assert await search(riley, f"#{tag}") == await search(riley, tag) == await search(riley, tag.upper()) == [beach]
    assert set(await search(riley, word[:6])) == {beach, studio}
    assert await search(riley, "#sun") == [beach]  # the hashtag `sun`, and `sunset` in the caption
    # Best match first: the video holding both words, then the one holding one.
    assert await search(riley, f"beach {word}") == [beach, studio]
    assert await search(riley, f"studio {word[:-2]}") == [studio, beach]
    assert await search(riley, f"{word}x") == []

    # Within a status (under_review by default; null for any) and a campaign.
    await riley.mutation("videos:requestChanges", {"videoId": studio, "note": "Brighter"})
    assert await search(riley, word) == [beach]
    assert await search(riley, word, status="changes_needed") == [studio]
    assert set(await search(riley, word, status=None)) == {beach, studio}
    assert await search(riley, word, status=None, campaignId=other_campaign) == [studio]
    assert await search(riley, word, campaignId=other_campaign) == []

    # Paginated: one result a page.
    first = await riley.query("videos:searchForReview", {"query": word, "status": None,
                                                         "paginationOpts": {"numItems": 1, "cursor": None}})
    second = await riley.query("videos:searchForReview", {"query": word, "status": None,
                                                          "paginationOpts": {"numItems": 1, "cursor": first["continueCursor"]}})
    assert not first["isDone"] and {first["page"][0]["_id"], second["page"][0]["_id"]} == {beach, studio}

    # No words (blank, or only '#'): the review queue's own order, as videos:listForReview lists it.
    listed = await riley.query("videos:listForReview", {"paginationOpts": PAGE, "campaignId": campaign})
    for blank in ("", "  ", "#"):
        assert await search(riley, blank, campaignId=campaign) == [v["_id"] for v in listed["page"]]

    # Reviewers only; a query longer than 200 characters is refused, naming the argument.
    await refused(casey.query("videos:searchForReview", {"query": word, "paginationOpts": PAGE}), "FORBIDDEN")
    await refused((await users.client(None)).query("videos:searchForReview", {"query": word, "paginationOpts": PAGE}),
                  "UNAUTHENTICATED")
    with pytest.raises(FunctionError, match="`query`: String should have at most 200 characters"):
        await search(riley, "a" * 201)


async def test_videos_stored_before_search_get_their_search_text(tmp_path: Path, namespace: str) -> None:
    """Videos an earlier version stored have no `searchText`, so the search index holds no words
    of theirs: one becomes searchable when it is next written (schema.py derives the text on
    every write), and videos:backfillSearchText writes the rest, a batch per transaction, each
    batch scheduling the next. In process: the earlier version is an app whose videos table
    takes any document."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "schema.py").write_text("from server import Schema, Table\n\nschema = Schema(videos=Table())\n")
    issuer = "https://issuer.example"
    riley = Identity({"tokenIdentifier": f"{issuer}|riley", "subject": "riley", "issuer": issuer, "role": "reviewer"})
    stored = {"creatorId": f"{issuer}|casey", "campaignId": "c", "status": "under_review", "hashtags": ["retro"],
              "approvalHistory": [], "processingRound": 1}
    async with open_runtime(app, namespace) as rt:
        async def insert(writer: DatabaseWriter, tx: Transaction) -> list[str]:
            return [await writer.insert("videos", {**stored, "caption": f"Old beach clip {n}"}) for n in range(3)]

        ids = await rt.system_transaction(insert)
        shutil.copy(ROOT / "schema.py", app / "schema.py")  # this version, with the search index
        shutil.copytree(ROOT / "functions", app / "functions", ignore=shutil.ignore_patterns("__pycache__"))
        await rt.load()

        async def found(query: str) -> list[str]:
            args = {"query": query, "status": None, "paginationOpts": PAGE}
            return [v["_id"] for v in (await rt.call("query", "videos:searchForReview", args, riley)).value["page"]]

        async def backfill(**args: Any) -> Any:
            return (await rt.call("mutation", "videos:backfillSearchText", args, allow_internal=True)).value

        assert await found("beach") == []
        await rt.call("mutation", "videos:approve", {"videoId": ids[0]}, riley)
        assert await found("#retro") == [ids[0]]

        scheduler = Scheduler(rt, SchedulerConfig(poll_seconds=30.0, fallback_poll_seconds=0.2))
        await scheduler.start()
        try:
            assert await backfill(batchSize=2) == {"updated": 1, "isDone": False}  # ids[0] was current

            for _ in range(400):  # the scheduled batch runs a moment later
                if len(await found("#retro")) == 3:
                    break
                await asyncio.sleep(0.05)
        finally:
            await scheduler.stop()
        assert set(await found("old beach")) == set(ids)
        assert await backfill() == {"updated": 0, "isDone": True}
