"""Video processing, run by the scheduler after an upload.

`videos:create` schedules `process_video` with `ctx.scheduler.run_after(0, ...)` in the same
transaction that records the video, so a video is processed if and only if it was created. The
action moves the video to `processing`, does the work, and hands it to review (`under_review`).
Actions may do network I/O (a transcoding service, say); this one derives a thumbnail URL locally
so the example runs offline and always gives the same result.
"""

import asyncio
import hashlib
import time
from typing import Literal

from server import internal_action, internal_mutation

STUCK_AFTER_MS = 10 * 60 * 1000


@internal_mutation
async def advance(ctx, videoId: str, expected: str, status: Literal["processing", "under_review", "uploaded"],
                  thumbnailUrl: str | None = None) -> bool:
    """Move a video from `expected` to `status`; False (and no change) if it is not in `expected`
    any more, e.g. deleted or already reviewed."""
    video = await ctx.db.get(videoId)
    if video is None or video["status"] != expected:
        return False
    fields = {
        "status": status,
        "approvalHistory": [*video["approvalHistory"], {"status": status, "at": time.time() * 1000}],
    }
    if thumbnailUrl is not None:
        fields["thumbnailUrl"] = thumbnailUrl
    await ctx.db.patch(videoId, fields)
    return True


@internal_action
async def process_video(ctx, videoId: str) -> str | None:
    """uploaded -> processing -> under_review, with a thumbnail. Returns the thumbnail URL."""
    if not await ctx.run_mutation(advance, {"videoId": videoId, "expected": "uploaded", "status": "processing"}):
        return None
    await asyncio.sleep(0.05)  # stands in for transcoding
    thumbnail = f"https://thumbnails.example.com/{hashlib.sha256(videoId.encode()).hexdigest()[:16]}.jpg"
    await ctx.run_mutation(advance, {"videoId": videoId, "expected": "processing", "status": "under_review",
                                     "thumbnailUrl": thumbnail})
    print(f"video {videoId} processed; ready for review")
    return thumbnail


@internal_mutation
async def requeue_stuck(ctx) -> int:
    """Run by a cron (functions/crons.py): a video left in `processing` for 10 minutes (its
    server died mid-action; actions are not retried) goes back to `uploaded` and is scheduled
    again."""
    cutoff = time.time() * 1000 - STUCK_AFTER_MS
    requeued = 0
    for video in await ctx.db.query("videos").with_index("by_status", lambda q: q.eq("status", "processing")).take(100):
        if video["approvalHistory"] and video["approvalHistory"][-1]["at"] < cutoff:
            await ctx.db.patch(video["_id"], {"status": "uploaded"})
            await ctx.scheduler.run_after(0, process_video, {"videoId": video["_id"]})
            requeued += 1
    return requeued
