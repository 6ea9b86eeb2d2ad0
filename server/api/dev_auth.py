"""The development issuer's routes (server/core/auth/dev_issuer.py), mounted by `build_app` only
when the server runs as `ripple dev`: `ripple serve` answers these paths 404 like any other.

    GET  /_ripple/dev-auth/.well-known/openid-configuration   the discovery document
    GET  /_ripple/dev-auth/jwks                               the public key
    POST /_ripple/dev-auth/token   {"subject", "name"?, "email"?, "role"?, "ttlSeconds"?}
                                   -> {"token", "expiresAt"}  (400 naming the field it refuses)

No admin key: a dev server trusts whoever reaches it (it listens on loopback by default), and the
demo page mints its users' tokens here. They go through the app-wide CORS like the rest of
/_ripple/.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.http_api import HttpError, error_response, json_response, parse_json, read_body
from server.core.auth.dev_issuer import (
    PATH,
    DevIssuer,
    TokenRequest,
    TokenRequestError,
    load_or_create_key,
)

MAX_REQUEST_BYTES = 16 * 1024


def dev_auth_routes(app_dir: Path, base_url: str) -> list[Route]:
    """The issuer's routes for the server reached at `base_url`; its key is made now if missing."""
    issuer = DevIssuer(load_or_create_key(app_dir), base_url)

    async def discovery(request: Request) -> Response:
        return json_response(issuer.discovery())

    async def jwks(request: Request) -> Response:
        return json_response(issuer.jwks())

    async def token(request: Request) -> Response:
        try:
            wanted = TokenRequest.parse(parse_json(await read_body(request, MAX_REQUEST_BYTES)))
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except TokenRequestError as exc:
            return error_response(400, "BadTokenRequest", str(exc))
        signed, expires_at = issuer.mint(wanted)
        return json_response({"token": signed, "expiresAt": expires_at})

    return [
        Route(f"{PATH}/.well-known/openid-configuration", discovery, methods=["GET"]),
        Route(f"{PATH}/jwks", jwks, methods=["GET"]),
        Route(f"{PATH}/token", token, methods=["POST"]),
    ]
