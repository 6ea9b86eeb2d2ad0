"""The processing service: what a transcoding service (Mux, a worker fleet) would do for the app,
served by the app itself so the example runs offline (docs/example-app.md#the-processing-service).

`POST /processing/jobs` (functions/http.py) checks the caller's key, answers 202 and schedules
`runJob`, which downloads the video, reads its duration and size and makes a JPEG thumbnail with
PyAV (FFmpeg), uploads the thumbnail to the upload URL the job brought, and POSTs the result to the
job's callback URL, signed as a Standard Webhooks delivery with PROCESSING_WEBHOOK_SECRET. It
talks to the app only over HTTP, as a separate service would: pointing PROCESSING_SERVICE_URL
at another deployment of it works the same.
"""

import asyncio
import contextlib
import datetime
import fractions
import json
import os
import tempfile
import uuid
from typing import Any

import av
import httpx
from standardwebhooks import Webhook

from server import internal_action, internal_mutation

MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024  # videos:createVideo refuses bigger files
THUMBNAIL_AT_SECONDS = 1.0
THUMBNAIL_MAX_WIDTH = 640
CALLBACK_ATTEMPTS = 3
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class DownloadError(Exception):
    pass


@internal_mutation
async def countRequest(ctx, videoId: str) -> int:
    """Count a job request for the video; returns how many there were, this one included (the
    service's PROCESSING_FAIL_FIRST answers the first N with 503, to exercise the app's retries)."""
    job = await ctx.db.query("processingJobs").with_index("by_video", lambda q: q.eq("videoId", videoId)).first()
    if job is None:
        await ctx.db.insert("processingJobs", {"videoId": videoId, "requests": 1})
        return 1
    await ctx.db.patch(job["_id"], {"requests": job["requests"] + 1})
    return int(job["requests"]) + 1


@internal_action
async def runJob(ctx, videoId: str, fileUrl: str, thumbnailUploadUrl: str, callbackUrl: str,
                 round: int | None = None) -> str:
    """Process one job and deliver its result; returns the result's outcome for the log."""
    result: dict[str, Any] = {"videoId": videoId}
    if round is not None:
        result["round"] = round
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True) as client:
        with tempfile.TemporaryDirectory(prefix="ripple-video-") as folder:
            path = os.path.join(folder, "video")
            try:
                await download(client, fileUrl, path)
                info = await asyncio.to_thread(probe, path)
            except DownloadError as exc:
                result["error"] = f"could not download the video: {exc}"
            except av.FFmpegError as exc:  # its text names our temporary file: say only what FFmpeg said
                result["error"] = f"the file is not a playable video: {exc.strerror or exc}"
            except ValueError as exc:
                result["error"] = f"the file is not a playable video: {exc}"
            else:
                thumbnail = info.pop("thumbnail")
                response = await client.post(thumbnailUploadUrl, content=thumbnail, headers={"Content-Type": "image/jpeg"})
                response.raise_for_status()
                result.update(info, thumbnailStorageId=response.json()["storageId"])
        await deliver(client, callbackUrl, result, ctx.env.get("PROCESSING_WEBHOOK_SECRET") or "")
    outcome = result.get("error") or f"{result['duration']:.2f} s, {result['width']}x{result['height']}"
    print(f"processed video {videoId}: {outcome}")
    return str(outcome)


async def download(client: httpx.AsyncClient, url: str, path: str) -> None:
    """Stream `url` into `path`, refusing files over MAX_DOWNLOAD_BYTES."""
    try:
        async with client.stream("GET", url) as response:
            if not response.is_success:
                raise DownloadError(f"{response.status_code} {response.reason_phrase}")
            size = 0
            with open(path, "wb") as out:  # noqa: ASYNC230 -- chunks of 64 KiB to a local file
                async for chunk in response.aiter_bytes(64 * 1024):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise DownloadError(f"the file is over {MAX_DOWNLOAD_BYTES} bytes")
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise DownloadError(f"{type(exc).__name__}: {exc}") from exc


def probe(path: str) -> dict[str, Any]:
    """The video's duration (seconds), width and height, and a JPEG of the frame about
    THUMBNAIL_AT_SECONDS in (the first frame of a shorter video). Blocking CPU work: run it in a
    thread. Raises av.FFmpegError (or ValueError) for a file FFmpeg cannot decode."""
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("it has no video stream")
        stream = container.streams.video[0]
        frame = None
        for decoded in container.decode(stream):
            if frame is None or decoded.time is None or decoded.time <= THUMBNAIL_AT_SECONDS:
                frame = decoded
            if decoded.time is not None and decoded.time >= THUMBNAIL_AT_SECONDS:
                break
        if frame is None:
            raise ValueError("it has no frames")
        if container.duration is not None:
            duration = container.duration / av.time_base
        elif stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = float(frame.time or 0.0)
        return {"duration": round(duration, 3), "width": frame.width, "height": frame.height,
                "thumbnail": jpeg(frame)}


def jpeg(frame: av.VideoFrame) -> bytes:
    """`frame` as a JPEG, at most THUMBNAIL_MAX_WIDTH wide, with FFmpeg's MJPEG encoder."""
    width = min(frame.width, THUMBNAIL_MAX_WIDTH)
    height = max(2, round(frame.height * width / frame.width))
    width, height = width - width % 2, height - height % 2
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = fractions.Fraction(1, 25)
    image = frame.reformat(width=width, height=height, format="yuvj420p")
    packets = [*encoder.encode(image), *encoder.encode(None)]
    return b"".join(bytes(packet) for packet in packets)


async def deliver(client: httpx.AsyncClient, url: str, result: dict[str, Any], secret: str) -> None:
    """POST `result` to the callback URL as a Standard Webhooks delivery: one `webhook-id` for
    every try, so the receiver applies it once however often it arrives. Tried CALLBACK_ATTEMPTS
    times while the receiver cannot be reached or answers 5xx."""
    if not secret:
        print("cannot deliver the result: PROCESSING_WEBHOOK_SECRET is not set")
        return
    payload = json.dumps(result)
    msg_id = f"msg_{uuid.uuid4().hex}"
    for attempt in range(1, CALLBACK_ATTEMPTS + 1):
        now = datetime.datetime.now(datetime.UTC)
        headers = {"Content-Type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": Webhook(secret).sign(msg_id, now, payload)}
        with contextlib.suppress(httpx.HTTPError):
            response = await client.post(url, content=payload, headers=headers)
            if response.status_code < 500:
                if not response.is_success:
                    print(f"the callback was refused: {response.status_code} {response.text[:200]}")
                return
        await asyncio.sleep(0.5 * 2 ** attempt)
    print(f"gave up delivering the result of video {result['videoId']} after {CALLBACK_ATTEMPTS} tries")
