"""An HTTP action reading the built-in URL, and a route that wins over public/routed.txt."""

from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse

from server import HttpRouter

http = HttpRouter()


@http.route("/site-url", methods=["GET"])
async def site_url(ctx: Any, request: Any) -> JSONResponse:
    return JSONResponse({"site": ctx.env["CONVEX_SITE_URL"], "cloud": ctx.env["CONVEX_CLOUD_URL"]})


@http.route("/routed.txt", methods=["GET"])
async def routed(ctx: Any, request: Any) -> PlainTextResponse:
    return PlainTextResponse("from the route")
