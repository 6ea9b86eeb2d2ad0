"""The environment-variable endpoints, as Convex's deployment API has them (what `npx convex env
set` posts to): `POST /api/update_environment_variables` with `{"changes": [{"name", "value"}]}`
(no value: remove), applied all or nothing, and `GET /api/list_environment_variables`
answering `{"environmentVariables": {name: value}}`. Both under `/api/v1/` too, and both need the
admin key. Nothing here logs or echoes a value (docs/env.md, Secrets).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api import http_api
from server.api.http_api import HttpError, error_response, json_response
from server.core.env import EnvVarError, parse_changes
from server.core.runtime import Runtime


class EnvRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _require_admin(self, request: Request) -> None:
        http_api.require_admin_header(request, self.runtime.config.admin_key, "environment variables")

    async def update(self, request: Request) -> Response:
        try:
            self._require_admin(request)
            body = http_api.parse_json(await http_api.read_body(request, self.runtime.config.max_body_bytes))
            await self.runtime.update_env(parse_changes(body))
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except EnvVarError as exc:
            return error_response(400, exc.code, str(exc))
        return json_response({})

    async def list(self, request: Request) -> Response:
        try:
            self._require_admin(request)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        return json_response({"environmentVariables": await self.runtime.refresh_env()})
