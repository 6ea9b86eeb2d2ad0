"""Creator videos: the upload & approval workflow of the example app (docs/example-app.md).

Creators upload a file (`generateUploadUrl`, then `createVideo`), processing takes the video from
`uploaded` to `under_review` (functions/processing.py), reviewers approve it, reject it or ask for
changes, and a creator answers changes with a new file (`resubmit`). A creator sees only their own
videos: every function checks the caller (functions/users.py), and a video that is not the
caller's is reported as not found, so its existence does not leak either.

Some functions here are exported as names that shadow builtins; annotations spell the builtin
`builtins.list`.
"""

import builtins
import re
import time
from typing import Annotated, Any, Literal

from pydantic import Field

from functions import processing
from functions.users import require_creator, require_reviewer, require_user, viewer
from schema import search_text
from server import UNSET, ConvexError, Id, internal_mutation, mutation, query

Status = Literal["uploaded", "processing", "under_review", "approved", "changes_needed", "rejected", "failed"]
Platform = Literal["tiktok", "instagram", "youtube", "x"]

VIDEO_TYPES = ("video/mp4", "video/webm", "video/quicktime")
MAX_VIDEO_BYTES = 200 * 1024 * 1024
MAX_QUERY_CHARS = 200  # of a search (only its first 16 words are looked for anyway)
_WORD = re.compile(r"[^\W_]")  # a letter or digit: what search terms are made of (docs/search.md)


def now_ms() -> float:
    return time.time() * 1000


def _not_found(video_id: str) -> ConvexError:
    return ConvexError({"code": "VIDEO_NOT_FOUND", "message": f"no video {video_id!r}"})


async def _video_for(ctx, video_id: str, user: dict[str, Any]) -> dict[str, Any]:
    """The video, if `user` may see it (its creator, or a reviewer); VIDEO_NOT_FOUND otherwise."""
    video = await ctx.db.get(video_id) if ctx.db.normalize_id("videos", video_id) else None
    if video is None or (video["creatorId"] != user["tokenIdentifier"] and user["role"] != "reviewer"):
        raise _not_found(video_id)
    return video


async def _own_video(ctx, video_id: str, user: dict[str, Any]) -> dict[str, Any]:
    video = await ctx.db.get(video_id) if ctx.db.normalize_id("videos", video_id) else None
    if video is None or video["creatorId"] != user["tokenIdentifier"]:
        raise _not_found(video_id)
    return video


def _expect(video: dict[str, Any], *statuses: str) -> None:
    if video["status"] not in statuses:
        allowed = " or ".join(statuses)
        raise ConvexError({"code": "WRONG_STATUS", "message": f"the video is {video['status']}, not {allowed}",
                           "status": video["status"]})


async def _check_file(ctx, storage_id: str) -> None:
    """Refuse a file that cannot be a video before anything is recorded: processing would fail on
    it later, after the creator left the page."""
    meta = await ctx.storage.get_metadata(storage_id)
    if meta is None:
        raise ConvexError({"code": "FILE_NOT_FOUND", "message": f"no uploaded file {storage_id!r}"})
    content_type = (meta.get("contentType") or "").split(";")[0].strip().lower()
    if content_type not in VIDEO_TYPES:
        raise ConvexError({"code": "INVALID_FILE", "message": f"the file's type is {content_type or 'not given'}; "
                           f"upload an MP4, WebM or QuickTime video ({', '.join(VIDEO_TYPES)})"})
    if meta["size"] > MAX_VIDEO_BYTES:
        raise ConvexError({"code": "INVALID_FILE", "message": f"the file has {meta['size']} bytes; videos may have "
                           f"at most {MAX_VIDEO_BYTES} (200 MB)"})


async def _with_urls(ctx, video: dict[str, Any]) -> dict[str, Any]:
    url = await ctx.storage.get_url(video["storageId"]) if video.get("storageId") else None
    return {**video, "url": url}


# -- creators -------------------------------------------------------------------------------------


@mutation
async def generateUploadUrl(ctx) -> str:
    """Step one of an upload: a URL the creator's browser POSTs the video file to (once, within
    an hour); the answer's `storageId` goes to `createVideo` (or `resubmit`)."""
    await require_creator(ctx)
    return await ctx.storage.generate_upload_url()


@mutation
async def createVideo(
    ctx,
    campaignId: str,
    storageId: Id[Literal["_storage"]],
    caption: str = "",
    hashtags: builtins.list[str] | None = None,
    platformSelections: builtins.list[Platform] | None = None,
) -> str:
    """Record the caller's uploaded video for an active campaign, with status `uploaded`, and
    schedule its processing in the same transaction, so a video is processed if and only if it
    was recorded."""
    user = await require_creator(ctx)
    await _check_file(ctx, storageId)
    campaign = await ctx.db.get(campaignId) if ctx.db.normalize_id("campaigns", campaignId) else None
    if campaign is None:
        raise ConvexError({"code": "CAMPAIGN_NOT_FOUND", "message": f"no campaign {campaignId!r}"})
    if campaign["status"] != "active":
        raise ConvexError({"code": "CAMPAIGN_CLOSED", "message": f"campaign {campaign['name']!r} is closed"})
    video_id = await ctx.db.insert("videos", {
        "creatorId": user["tokenIdentifier"],
        "creatorName": user["name"],
        "campaignId": campaignId,
        "storageId": storageId,
        "caption": caption,
        "platformSelections": platformSelections or [],
        "hashtags": [h.lstrip("#").lower() for h in hashtags or [] if h.lstrip("#")],
        "status": "uploaded",
        "processingRound": 1,
        "processingAttempts": 0,
        "processingUpdatedAt": now_ms(),
        "approvalHistory": [{"status": "uploaded", "at": now_ms()}],
    })
    await ctx.scheduler.run_after(0, processing.processVideo, {"videoId": video_id})
    print(f"video {video_id} created for campaign {campaign['name']}")
    return video_id


@mutation
async def resubmit(ctx, videoId: str, storageId: Id[Literal["_storage"]]) -> None:
    """Answer a reviewer's request for changes (or a failed processing) with a new file: the video
    goes back to `uploaded` in a new processing round, and the replaced file and thumbnail are
    deleted. A callback still on its way for the old round is then ignored (processing.applyResult)."""
    user = await require_creator(ctx)
    video = await _own_video(ctx, videoId, user)
    _expect(video, "changes_needed", "failed")
    await _check_file(ctx, storageId)
    for old in (video.get("storageId"), video.get("thumbnailStorageId")):
        if old and old != storageId and await ctx.storage.get_metadata(old) is not None:
            await ctx.storage.delete(old)
    await ctx.db.patch(videoId, {
        "storageId": storageId,
        "status": "uploaded",
        "processingRound": video["processingRound"] + 1,
        "processingAttempts": 0,
        "processingUpdatedAt": now_ms(),
        **{field: UNSET for field in ("thumbnailStorageId", "thumbnailUrl", "duration", "width", "height",
                                      "failureReason", "lastError")},
        "approvalHistory": [*video["approvalHistory"], {"status": "uploaded", "at": now_ms()}],
    })
    await ctx.scheduler.run_after(0, processing.processVideo, {"videoId": videoId})


@query
async def listMine(ctx, paginationOpts: dict[str, Any], status: Status | None = None) -> dict[str, Any]:
    """A page of the caller's own videos, newest first (through by_creator or by_creator_status)."""
    user = await require_user(ctx)
    me = user["tokenIdentifier"]
    if status is None:
        q = ctx.db.query("videos").with_index("by_creator", lambda r: r.eq("creatorId", me))
    else:
        q = ctx.db.query("videos").with_index("by_creator_status", lambda r: r.eq("creatorId", me).eq("status", status))
    return await q.order("desc").paginate(paginationOpts)


@mutation
async def markPosted(ctx, videoId: str) -> None:
    """The creator posted their approved video; engagement can be recorded from now on."""
    user = await require_user(ctx)
    video = await _own_video(ctx, videoId, user)
    _expect(video, "approved")
    if video.get("postCreatedAt") is None:
        await ctx.db.patch(videoId, {"postCreatedAt": now_ms(), "engagementMetrics": {"views": 0, "likes": 0, "comments": 0, "shares": 0}})


@mutation
async def updateEngagement(ctx, videoId: str, views: int, likes: int, comments: int, shares: int) -> None:
    """Record a posted video's engagement (its creator or a reviewer)."""
    user = await require_user(ctx)
    video = await _video_for(ctx, videoId, user)
    if video.get("postCreatedAt") is None:
        raise ConvexError({"code": "NOT_POSTED", "message": "the video has not been posted (videos:markPosted)"})
    await ctx.db.patch(videoId, {"engagementMetrics": {"views": views, "likes": likes, "comments": comments,
                                                       "shares": shares}})


# -- reviewers ------------------------------------------------------------------------------------


@query
async def listForReview(
    ctx,
    paginationOpts: dict[str, Any],
    status: Status | None = "under_review",
    campaignId: str | None = None,
) -> dict[str, Any]:
    """A page of every creator's videos (reviewers), newest first: those with `status` (the review
    queue by default; null for all), of one campaign when `campaignId` is given."""
    await require_reviewer(ctx)
    return await _review_listing(ctx, status, campaignId).paginate(paginationOpts)


def _review_listing(ctx, status: Status | None, campaign_id: str | None) -> Any:
    """listForReview's query: each filter combination reads an index that gives its order,
    newest first."""
    q = ctx.db.query("videos")
    if campaign_id is not None and status is not None:
        q = q.with_index("by_campaign_status", lambda r: r.eq("campaignId", campaign_id).eq("status", status))
    elif campaign_id is not None:
        q = q.with_index("by_campaign", lambda r: r.eq("campaignId", campaign_id))
    elif status is not None:
        q = q.with_index("by_status", lambda r: r.eq("status", status))
    return q.order("desc")


@query
async def searchForReview(
    ctx,
    query: Annotated[str, Field(max_length=MAX_QUERY_CHARS)],
    paginationOpts: dict[str, Any],
    status: Status | None = "under_review",
    campaignId: str | None = None,
) -> dict[str, Any]:
    """Reviewers: a page of the videos whose caption or hashtags hold the words of `query`, best
    match first (then newest), with `status` (null: any) and of `campaignId` when given, as
    listForReview filters. The last word also matches as the start of a word ("sum" finds
    "summer"), and "#summer" is the word "summer". A query without words (blank, or only "#")
    lists like listForReview instead, newest first, so a search box can call this alone."""
    await require_reviewer(ctx)
    if not _WORD.search(query):
        return await _review_listing(ctx, status, campaignId).paginate(paginationOpts)

    def search(q: Any) -> Any:
        q = q.search("searchText", query)
        if status is not None:
            q = q.eq("status", status)
        if campaignId is not None:
            q = q.eq("campaignId", campaignId)
        return q

    return await ctx.db.query("videos").with_search_index("search_text", search).paginate(paginationOpts)


@internal_mutation
async def backfillSearchText(
    ctx, cursor: str | None = None, batchSize: Annotated[int, Field(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Give videos stored before `searchText` existed their search text (schema.py derives it on
    every write, so a video is searchable once it is next written; this writes them all now):
    `ripple run videos:backfillSearchText`. One batch of `batchSize` videos per transaction,
    each scheduling the next; videos whose text is current are left alone, so running it
    twice is harmless. Returns this batch's `{"updated", "isDone"}`."""
    batch = await ctx.db.query("videos").paginate({"numItems": batchSize, "cursor": cursor})
    updated = 0
    for video in batch["page"]:
        text = search_text(video.get("caption", ""), video.get("hashtags", []))
        if video.get("searchText") != text:
            await ctx.db.patch(video["_id"], {"searchText": text})
            updated += 1
    if not batch["isDone"]:
        await ctx.scheduler.run_after(0, backfillSearchText, {"cursor": batch["continueCursor"], "batchSize": batchSize})
    return {"updated": updated, "isDone": batch["isDone"]}


@query
async def get(ctx, id: str) -> dict[str, Any] | None:
    """The video with `url` (where its file plays from), or null when it does not exist or is
    another creator's (reviewers see every video; signed-out callers see none)."""
    if ctx.db.normalize_id("videos", id) is None:
        raise ConvexError({"code": "INVALID_ID", "message": f"{id!r} is not a video id"})
    user = await viewer(ctx)
    if user is None:
        return None
    video = await ctx.db.get(id)
    if video is None or (video["creatorId"] != user["tokenIdentifier"] and user["role"] != "reviewer"):
        return None
    return await _with_urls(ctx, video)


async def _review(ctx, video_id: str, status: str, note: str | None) -> None:
    reviewer = await require_reviewer(ctx)
    video = await _video_for(ctx, video_id, reviewer)
    _expect(video, "under_review")
    entry = {"status": status, "reviewerId": reviewer["tokenIdentifier"], "note": note, "at": now_ms()}
    await ctx.db.patch(video_id, {"status": status, "approvalHistory": [*video["approvalHistory"], entry]})


@mutation
async def approve(ctx, videoId: str, note: str | None = None) -> None:
    await _review(ctx, videoId, "approved", note)


@mutation
async def requestChanges(ctx, videoId: str, note: str) -> None:
    """Send the video back to its creator; `note` says what to change."""
    if not note.strip():
        raise ConvexError({"code": "NOTE_REQUIRED", "message": "say what should change in the note"})
    await _review(ctx, videoId, "changes_needed", note)


@mutation
async def reject(ctx, videoId: str, note: str | None = None) -> None:
    await _review(ctx, videoId, "rejected", note)


@mutation
async def setPaymentStatus(ctx, videoId: str, paymentStatus: Literal["unpaid", "pending", "paid"]) -> None:
    reviewer = await require_reviewer(ctx)
    video = await _video_for(ctx, videoId, reviewer)
    _expect(video, "approved")
    await ctx.db.patch(videoId, {"paymentStatus": paymentStatus})
