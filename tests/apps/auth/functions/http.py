"""HTTP actions that show who sent the request (its Bearer token) and read an environment variable."""

from server.http import HttpRouter, JSONResponse, Request

http = HttpRouter()


@http.route("/whoami", methods=["GET"])
async def whoami(ctx, request: Request) -> JSONResponse:
    identity = await ctx.auth.get_user_identity()  # raises for a token that proves no one: 401
    notes = await ctx.run_query("me:my_notes") if identity is not None else []
    print("greeting:", ctx.env.get("GREETING"))  # a value in a log line is masked in the server log
    return JSONResponse({"identity": identity, "notes": notes, "greeting": ctx.env.get("GREETING")})
