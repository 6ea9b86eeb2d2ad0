"""HTTP actions of the log-stream test app (tests/test_logs.py)."""

from server import HttpRouter
from server.http import PlainTextResponse, Request

http = HttpRouter()


@http.route("/echo", methods=["POST"])
async def echo(ctx, request: Request) -> PlainTextResponse:
    print("http", (await request.body()).decode())
    return PlainTextResponse("ok")


@http.route("/explode", methods=["GET"])
async def explode(ctx, request: Request) -> PlainTextResponse:
    print("exploding")
    raise RuntimeError("internal detail http")
