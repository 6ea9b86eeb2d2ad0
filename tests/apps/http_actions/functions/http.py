"""The routes tests/test_http_actions.py drives."""

import asyncio
import hashlib
import json
import time

from server import Cors, HttpRouter, verify_hmac, verify_webhook
from server.http import JSONResponse, PlainTextResponse, Request, StreamingResponse

# Secrets the tests sign with (a real app reads them from ctx.env).
CLERK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GITHUB_SECRET = "It's a Secret to Everybody"

http = HttpRouter()


def where(route: str, request: Request) -> JSONResponse:
    return JSONResponse({"route": route, "path": request.url.path, "method": request.method})


@http.route("/hello", methods=["GET", "POST"])
async def hello(ctx, request: Request) -> JSONResponse:
    return where("/hello", request)


@http.route(path_prefix="/files/", methods=["GET"])
async def files(ctx, request: Request) -> JSONResponse:
    return where("/files/", request)


@http.route(path_prefix="/files/deep/", methods=["GET"])
async def deep_files(ctx, request: Request) -> JSONResponse:
    return where("/files/deep/", request)


@http.route("/files/exact", methods=["GET"])
async def exact_file(ctx, request: Request) -> JSONResponse:
    return where("/files/exact", request)


async def convex_style(ctx, request: Request) -> JSONResponse:
    return where("/convex-style", request)


http.route(path="/convex-style", method="PUT", handler=convex_style)


@http.route("/hash", methods=["POST"])
async def hash_body(ctx, request: Request) -> JSONResponse:
    """Hash the body while it streams in; never hold it."""
    digest, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"sha256": digest.hexdigest(), "bytes": size})


@http.route("/swallow", methods=["POST"])
async def swallow(ctx, request: Request) -> PlainTextResponse:
    """Catches the error of a read past the limit and answers as if nothing happened."""
    try:
        await request.body()
    except Exception:
        pass
    return PlainTextResponse("fine")


@http.route("/cors", methods=["GET", "POST"],
            cors=Cors(origins=["https://app.example.com"], headers=["Content-Type", "X-Custom"], expose_headers=["X-Note"]))
async def cors(ctx, request: Request) -> JSONResponse:
    return JSONResponse({"ok": True}, headers={"X-Note": "read me"})


@http.route("/webhooks/clerk", methods=["POST"])
async def clerk_webhook(ctx, request: Request) -> JSONResponse:
    body = await verify_webhook(request, CLERK_SECRET)
    event = json.loads(body)
    webhook_id = request.headers.get("svix-id") or request.headers["webhook-id"]
    first = await ctx.run_mutation("notes:record_webhook", {"webhook_id": webhook_id, "event": event["type"]})
    return JSONResponse({"recorded": first})


@http.route("/webhooks/github", methods=["POST"])
async def github_webhook(ctx, request: Request) -> JSONResponse:
    body = await verify_hmac(request, GITHUB_SECRET)
    return JSONResponse({"bytes": len(body)})


@http.route("/boom", methods=["GET"])
async def boom(ctx, request: Request) -> JSONResponse:
    raise ValueError("the internal detail that must not leak")


@http.route("/not-a-response", methods=["GET"])
async def not_a_response(ctx, request: Request) -> dict[str, int]:
    return {"a": 1}


@http.route("/notes", methods=["POST"])
async def add_note(ctx, request: Request) -> JSONResponse:
    text = (await request.json())["text"]
    await ctx.run_mutation("notes:add", {"text": text})
    return JSONResponse({"texts": await ctx.run_query("notes:texts")})


@http.route("/stream", methods=["GET"])
async def stream(ctx, request: Request) -> StreamingResponse:
    async def parts():
        for i in range(5):
            await asyncio.sleep(0.05)
            yield f"part {i}\n".encode()

    return StreamingResponse(parts(), media_type="text/plain")


@http.route("/stream-then-block", methods=["GET"])
async def stream_then_block(ctx, request: Request) -> StreamingResponse:
    async def parts():
        yield b"first part\n"
        time.sleep(30)  # noqa: ASYNC251 -- holds the event loop: the watchdog stops it, the response is cut
        yield b"never sent\n"

    return StreamingResponse(parts(), media_type="text/plain")


@http.route("/block", methods=["GET"])
async def block(ctx, request: Request) -> PlainTextResponse:
    time.sleep(30)  # noqa: ASYNC251 -- holds the event loop until the watchdog interrupts it
    return PlainTextResponse("unreachable")


@http.route("/whoami", methods=["GET"])
async def whoami(ctx, request: Request) -> JSONResponse:
    identity = await ctx.auth.get_user_identity()
    return JSONResponse({"identity": None if identity is None else identity.subject})


@http.route("/auth-header", methods=["GET"])
async def auth_header(ctx, request: Request) -> JSONResponse:
    """An app that reads its own Authorization header."""
    return JSONResponse({"authorization": request.headers.get("authorization")})


@http.route("/print", methods=["GET"])
async def prints(ctx, request: Request) -> PlainTextResponse:
    print("printed by an HTTP action")
    return PlainTextResponse("printed")


@http.route("/progress", methods=["POST"])
async def progress(ctx, request: Request) -> StreamingResponse:
    """Starts its response, then reads the body: past the limit, the response is cut."""

    async def report():
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        yield f"read {size // (1024 * 1024)} MiB\n".encode()

    return StreamingResponse(report(), media_type="text/plain")
