"""Creator videos: the upload & approval workflow of the example app (docs/example-app.md).

The query exported as `list` (path `videos:list`) shadows the builtin in this module, so
annotations below spell it `builtins.list`.
"""

import builtins
import time
from typing import Any, Literal

from functions import processing
from server import ConvexError, Id, mutation, query

Status = Literal["uploaded", "processing", "under_review", "approved", "changes_needed", "rejected"]


@query
async def list(
    ctx,
    paginationOpts: dict[str, Any],
    status: Status | None = None,
    campaignId: str | None = None,
) -> dict[str, Any]:
    """A page of videos, newest first, filtered by campaign and/or status through an index."""
    q = ctx.db.query("videos")
    if campaignId is not None:
        if status is not None:
            q = q.with_index("by_campaign", lambda r: r.eq("campaignId", campaignId).eq("status", status))
        else:
            q = q.with_index("by_campaign", lambda r: r.eq("campaignId", campaignId))
    elif status is not None:
        q = q.with_index("by_status", lambda r: r.eq("status", status))
    return await q.order("desc").paginate(paginationOpts)


@query
async def get(ctx, id: str) -> dict[str, Any] | None:
    """The video, with `url`: where its file plays from (None without a file, or once deleted)."""
    if ctx.db.normalize_id("videos", id) is None:
        raise ConvexError({"code": "INVALID_ID", "message": f"{id!r} is not a video id"})
    video = await ctx.db.get(id)
    if video is None:
        return None
    url = await ctx.storage.get_url(video["storageId"]) if video.get("storageId") else None
    return {**video, "url": url}


@mutation
async def generate_upload_url(ctx) -> str:
    """Step one of an upload: a URL the creator's browser POSTs the video file to (once, within
    an hour); the answer's `storageId` goes to `videos:create`."""
    return await ctx.storage.generate_upload_url()


@mutation
async def create(
    ctx,
    creatorId: str,
    campaignId: str,
    caption: str = "",
    storageId: Id[Literal["_storage"]] | None = None,
    platformSelections: builtins.list[Literal["tiktok", "instagram", "youtube", "x"]] | None = None,
    hashtags: builtins.list[str] | None = None,
) -> str:
    """Record an uploaded video for a campaign, with status `uploaded`, and schedule its
    processing (functions/processing.py), which takes it on to `under_review`. `storageId`: the
    uploaded file (from the upload URL's answer); an id that names no stored file is refused."""
    if storageId is not None and await ctx.db.system.get(storageId) is None:
        raise ConvexError({"code": "FILE_NOT_FOUND", "message": f"no uploaded file {storageId!r}"})
    campaign = await ctx.db.get(campaignId) if ctx.db.normalize_id("campaigns", campaignId) else None
    if campaign is None:
        raise ConvexError({"code": "CAMPAIGN_NOT_FOUND", "message": f"no campaign {campaignId!r}"})
    if campaign["status"] != "active":
        raise ConvexError({"code": "CAMPAIGN_CLOSED", "message": f"campaign {campaign['name']!r} is closed"})
    now = time.time() * 1000
    video_id = await ctx.db.insert("videos", {
        "creatorId": creatorId,
        "campaignId": campaignId,
        "storageId": storageId,
        "caption": caption,
        "platformSelections": platformSelections or [],
        "hashtags": [h.lstrip("#").lower() for h in hashtags or []],
        "status": "uploaded",
        "approvalHistory": [{"status": "uploaded", "at": now}],
    })
    await ctx.scheduler.run_after(0, processing.process_video, {"videoId": video_id})
    print(f"video {video_id} created for campaign {campaign['name']}")
    return video_id
