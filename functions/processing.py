"""Video processing: the app's side of the processing service (docs/example-app.md#processing).

`videos:createVideo` and `videos:resubmit` schedule `processVideo` in the transaction that records
the video, so a video is processed if and only if it was recorded. The action sends the job (the
file's URL, an upload URL for the thumbnail, the callback URL) to the processing service and
moves the video to `processing`; the service answers 202 at once and later POSTs the result to
the webhook (functions/http.py), which `applyResult` applies: `under_review` with a thumbnail and
a duration, or `failed`.

A job request that fails for a reason that may pass (no connection, a timeout, 429, 5xx) is tried
again, `processVideo` scheduling itself with capped exponential backoff and full jitter, until
PROCESSING_MAX_ATTEMPTS; any other answer (a 4xx: the service refuses the job as it is) fails the
video at once. Every step re-reads the video and changes it only in the state it expects: the
video may have been deleted, resubmitted or already processed meanwhile.
"""

import random
import time
from typing import Any, Literal

import httpx

from server import UNSET, ConvexError, Id, internal_action, internal_mutation

REQUEST_TIMEOUT_SECONDS = 10.0
STUCK_AFTER_MS = 10 * 60 * 1000


def now_ms() -> float:
    return time.time() * 1000


def _int_env(env: Any, name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConvexError({"code": "BAD_SETTING", "message": f"{name} must be a whole number"}) from None
    if value < 0:
        raise ConvexError({"code": "BAD_SETTING", "message": f"{name} must not be negative"})
    return value


def retry_delay_seconds(attempt: int, base_ms: int, cap_ms: int) -> float:
    """How long to wait before attempt `attempt + 1`: capped exponential backoff with full jitter
    (uniform between 0 and min(cap, base * 2^(attempt-1))), so many videos failing together do
    not retry together."""
    ceiling = min(cap_ms, base_ms * 2 ** min(attempt - 1, 32))
    return random.uniform(0, ceiling) / 1000


def endpoints(env: Any) -> tuple[str, str, str]:
    """The service's URL, the callback URL and the service key, or a ConvexError saying what is
    missing. Both URLs default to this deployment's own routes (functions/http.py)."""
    site = (env.get("CONVEX_SITE_URL") or "").rstrip("/")
    service = env.get("PROCESSING_SERVICE_URL") or (site and site + "/processing/jobs")
    callback = env.get("PROCESSING_CALLBACK_URL") or (site and site + "/webhooks/processing")
    if not service or not callback:
        raise ConvexError({"code": "NOT_CONFIGURED", "message": "the deployment's site URL (CONVEX_SITE_URL) is unknown "
                           "and PROCESSING_SERVICE_URL / PROCESSING_CALLBACK_URL are not set"})
    key = env.get("PROCESSING_SERVICE_KEY")
    if not key:
        raise ConvexError({"code": "NOT_CONFIGURED", "message": "PROCESSING_SERVICE_KEY is not set "
                           "(`ripple env set PROCESSING_SERVICE_KEY`)"})
    return service, callback, key


def _is_transient(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


def _describe(response: httpx.Response) -> str:
    text = f"{response.status_code} {response.reason_phrase}".strip()
    detail = response.text.strip()[:200]
    return f"{text}: {detail}" if detail and response.status_code < 500 else text


async def _current(ctx, video_id: str, round: int) -> dict[str, Any] | None:
    """The video while it is still waiting for this round's job to be accepted."""
    video = await ctx.db.get(video_id)
    if video is None or video["status"] != "uploaded" or video["processingRound"] != round:
        return None
    return video


# -- the action and its steps --------------------------------------------------------------------


@internal_mutation
async def startAttempt(ctx, videoId: Id[Literal["videos"]], attempt: int) -> dict[str, Any] | None:
    """Claim attempt `attempt` of the video's current round: None (do nothing) unless the video is
    `uploaded` and exactly `attempt - 1` attempts were made, so two chains of retries (one left
    over after `requeue_stuck` started a new round) never both send jobs."""
    video = await ctx.db.get(videoId)
    if video is None or video["status"] != "uploaded" or video["processingAttempts"] != attempt - 1:
        return None
    await ctx.db.patch(videoId, {"processingAttempts": attempt, "processingUpdatedAt": now_ms()})
    return {"storageId": video.get("storageId"), "round": video["processingRound"]}


@internal_mutation
async def markProcessing(ctx, videoId: Id[Literal["videos"]], round: int) -> bool:
    """The service accepted the job: `uploaded` -> `processing`. False when the video moved on
    meanwhile (the result may even have arrived already)."""
    video = await _current(ctx, videoId, round)
    if video is None:
        return False
    await ctx.db.patch(videoId, {
        "status": "processing", "processingUpdatedAt": now_ms(),
        "approvalHistory": [*video["approvalHistory"], {"status": "processing", "at": now_ms()}],
    })
    return True


@internal_mutation
async def recordFailure(ctx, videoId: Id[Literal["videos"]], round: int, attempt: int, error: str, retryIn: float | None,
                        reason: str) -> str:
    """A job request failed: with `retryIn` (seconds), record the error and schedule the next
    attempt, in this one transaction so the retry happens if and only if it is recorded;
    without, the video is `failed` with `reason`."""
    video = await _current(ctx, videoId, round)
    if video is None or video["processingAttempts"] != attempt:
        return "stale"
    if retryIn is not None:
        await ctx.db.patch(videoId, {"lastError": error, "processingUpdatedAt": now_ms()})
        await ctx.scheduler.run_after(retryIn, processVideo, {"videoId": videoId, "attempt": attempt + 1})
        return "retrying"
    await ctx.db.patch(videoId, {
        "status": "failed", "lastError": error, "failureReason": reason, "processingUpdatedAt": now_ms(),
        "approvalHistory": [*video["approvalHistory"], {"status": "failed", "note": reason, "at": now_ms()}],
    })
    print(f"video {videoId} failed: {reason}")
    return "failed"


@internal_action
async def processVideo(ctx, videoId: Id[Literal["videos"]], attempt: int = 1) -> str:
    """Send the video's processing job to the service (attempt `attempt` of its round). Returns
    what happened: "sent", "retrying", "failed", or "skipped" when the video is not waiting for
    this attempt (deleted, resubmitted, processed, or claimed by another run)."""
    job = await ctx.run_mutation(startAttempt, {"videoId": videoId, "attempt": attempt})
    if job is None:
        return "skipped"
    round = job["round"]

    async def fail(error: str, reason: str, retry_in: float | None = None) -> str:
        return str(await ctx.run_mutation(recordFailure, {"videoId": videoId, "round": round, "attempt": attempt,
                                                          "error": error, "retryIn": retry_in, "reason": reason}))

    try:
        max_attempts = max(1, _int_env(ctx.env, "PROCESSING_MAX_ATTEMPTS", 5))
        base_ms = _int_env(ctx.env, "PROCESSING_RETRY_BASE_MS", 1000)
        cap_ms = _int_env(ctx.env, "PROCESSING_RETRY_CAP_MS", 30000)
        service_url, callback_url, key = endpoints(ctx.env)
    except ConvexError as exc:
        message = exc.data["message"]
        return await fail(message, f"processing is not configured: {message}")
    file_url = await ctx.storage.get_url(job["storageId"]) if job["storageId"] else None
    if file_url is None:
        return await fail("no file", "the video's file is gone")
    body = {"videoId": videoId, "round": round, "fileUrl": file_url,
            "thumbnailUploadUrl": await ctx.storage.generate_upload_url(), "callbackUrl": callback_url}
    try:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS) as client:
            response = await client.post(service_url, json=body, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:  # no connection, a timeout, a broken answer: all may pass
        error, transient = f"{type(exc).__name__}: {exc}".rstrip(": "), True
    else:
        if response.is_success:
            await ctx.run_mutation(markProcessing, {"videoId": videoId, "round": round})
            print(f"video {videoId}: processing job accepted (attempt {attempt})")
            return "sent"
        error, transient = _describe(response), _is_transient(response.status_code)
    if not transient:
        return await fail(error, f"the processing service refused the job: {error}")
    if attempt >= max_attempts:
        times = "once" if attempt == 1 else f"{attempt} times"
        return await fail(error, f"the processing service failed {times}; last: {error}")
    return await fail(error, "", retry_delay_seconds(attempt, base_ms, cap_ms))


# -- the result -------------------------------------------------------------------------------------


@internal_mutation
async def applyResult(
    ctx,
    webhookId: str,
    videoId: str,
    round: int | None = None,
    thumbnailStorageId: Id[Literal["_storage"]] | None = None,
    duration: float | None = None,
    width: int | None = None,
    height: int | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """Apply one verified webhook delivery of the processing service, once: the delivery is
    recorded by its `webhook-id` in the same transaction, so a replay (or the sender retrying
    a delivery it thinks was lost) is answered `duplicate` and changes nothing. A result for a
    video that is not waiting for one, or for an earlier round (a late callback after a
    resubmit), is recorded and ignored, and its thumbnail deleted."""
    seen = await ctx.db.query("webhookDeliveries").with_index(
        "by_webhook_id", lambda q: q.eq("webhookId", webhookId)).first()
    if seen is not None:
        return {"duplicate": True, "outcome": seen["outcome"]}
    video = await ctx.db.get(videoId) if ctx.db.normalize_id("videos", videoId) else None
    if video is None:
        outcome = "ignored: no such video"
    elif round is not None and round != video["processingRound"]:
        outcome = f"ignored: a result of round {round}; the video is in round {video['processingRound']}"
    elif video["status"] not in ("uploaded", "processing"):  # uploaded: the 202 and markProcessing are still on their way
        outcome = f"ignored: the video is {video['status']}"
    elif error is not None:
        outcome = "applied: failed"
        await ctx.db.patch(videoId, {
            "status": "failed", "failureReason": error, "processingUpdatedAt": now_ms(),
            "approvalHistory": [*video["approvalHistory"], {"status": "failed", "note": error, "at": now_ms()}],
        })
    else:
        outcome = "applied: under_review"
        thumbnail_url = await ctx.storage.get_url(thumbnailStorageId) if thumbnailStorageId else None
        fields = {"thumbnailStorageId": thumbnailStorageId, "thumbnailUrl": thumbnail_url, "duration": duration,
                  "width": width, "height": height}
        await ctx.db.patch(videoId, {
            **{k: UNSET if v is None else v for k, v in fields.items()},
            "status": "under_review", "processingUpdatedAt": now_ms(),
            "approvalHistory": [*video["approvalHistory"], {"status": "under_review", "at": now_ms()}],
        })
    if outcome.startswith("ignored") and thumbnailStorageId and await ctx.storage.get_metadata(thumbnailStorageId):
        await ctx.storage.delete(thumbnailStorageId)
    await ctx.db.insert("webhookDeliveries", {"webhookId": webhookId, "videoId": videoId, "outcome": outcome,
                                              "at": now_ms()})
    print(f"processing result for video {videoId}: {outcome}")
    return {"duplicate": False, "outcome": outcome}


# -- the cron -------------------------------------------------------------------------------------------


@internal_mutation
async def requeue_stuck(ctx) -> int:
    """Run by a cron (functions/crons.py). A video waits in `uploaded` only while a job request
    is scheduled, and in `processing` only while the service works; one that sat in either for
    10 minutes (plus the retry cap) lost its job: the server died mid-action (actions are not
    retried), or the service lost the job or its callback. It starts a new round, so a callback
    of the lost job that still arrives is ignored. Returns how many videos were requeued."""
    cutoff = now_ms() - STUCK_AFTER_MS - _int_env(ctx.env, "PROCESSING_RETRY_CAP_MS", 30000)
    requeued = 0
    for status in ("uploaded", "processing"):
        waiting = await ctx.db.query("videos").with_index("by_status", lambda q, s=status: q.eq("status", s)).take(100)
        for video in waiting:
            updated = video.get("processingUpdatedAt") or video["approvalHistory"][-1]["at"]
            if updated >= cutoff:
                continue
            await ctx.db.patch(video["_id"], {
                "status": "uploaded", "processingRound": video["processingRound"] + 1, "processingAttempts": 0,
                "processingUpdatedAt": now_ms(),
                "approvalHistory": [*video["approvalHistory"], {"status": "uploaded", "note": "requeued: processing "
                                    "stalled", "at": now_ms()}],
            })
            await ctx.scheduler.run_after(0, processVideo, {"videoId": video["_id"]})
            requeued += 1
    return requeued
