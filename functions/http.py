"""The example app's HTTP routes (docs/http-actions.md): the processing service's job endpoint
(functions/processing_service.py) and the webhook it reports results to."""

import hmac
import json
from typing import Any

from functions import processing, processing_service
from server import HttpRouter, verify_webhook
from server.http import JSONResponse, Request

http = HttpRouter()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


@http.route("/processing/jobs", methods=["POST"])
async def processing_jobs(ctx, request: Request) -> JSONResponse:
    """Accept a job `{videoId, fileUrl, thumbnailUploadUrl, callbackUrl, round?}` from a caller
    holding PROCESSING_SERVICE_KEY: 202, and the work runs in the background."""
    key = ctx.env.get("PROCESSING_SERVICE_KEY")
    if not key:
        return _error(503, "NotConfigured", "PROCESSING_SERVICE_KEY is not set")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        return _error(401, "Unauthorized", "send the service key as `Authorization: Bearer <PROCESSING_SERVICE_KEY>`")
    try:
        job: Any = json.loads(await request.body())
    except ValueError:
        job = None
    fields = ("videoId", "fileUrl", "thumbnailUploadUrl", "callbackUrl")
    if not isinstance(job, dict) or not all(isinstance(job.get(f), str) and job[f] for f in fields):
        return _error(400, "BadJob", f"the body must be a JSON object with the strings {', '.join(fields)}")
    round = job.get("round")
    if round is not None and (not isinstance(round, int) or isinstance(round, bool)):
        return _error(400, "BadJob", "`round` must be an integer")
    requests = await ctx.run_mutation(processing_service.countRequest, {"videoId": job["videoId"]})
    fail_first = int(ctx.env.get("PROCESSING_FAIL_FIRST") or 0)
    if requests <= fail_first:
        return _error(503, "Unavailable", f"failing request {requests} of {fail_first} for this video (PROCESSING_FAIL_FIRST)")
    await ctx.scheduler.run_after(0, processing_service.runJob, {**{f: job[f] for f in fields}, "round": round})
    return JSONResponse({"accepted": True}, status_code=202)


@http.route("/webhooks/processing", methods=["POST"])
async def processing_webhook(ctx, request: Request) -> JSONResponse:
    """The processing service's result, signed with PROCESSING_WEBHOOK_SECRET (Standard Webhooks).
    An unsigned, forged or stale delivery is answered 401 and changes nothing (verify_webhook);
    a replay is answered 200 `{"duplicate": true}` (processing.applyResult)."""
    secret = ctx.env.get("PROCESSING_WEBHOOK_SECRET")
    if not secret:
        return _error(503, "NotConfigured", "PROCESSING_WEBHOOK_SECRET is not set")
    body = await verify_webhook(request, secret)
    webhook_id = request.headers.get("webhook-id") or request.headers.get("svix-id")
    try:
        event: Any = json.loads(body)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("videoId"), str):
        return _error(400, "BadEvent", "the body must be a JSON object with a `videoId`")
    known = ("videoId", "round", "thumbnailStorageId", "duration", "width", "height", "error")
    args = {k: event[k] for k in known if event.get(k) is not None}
    result = await ctx.run_mutation(processing.applyResult, {"webhookId": webhook_id, **args})
    return JSONResponse(result)
