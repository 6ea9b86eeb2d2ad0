"""`GET /_ripple/logs`: the log stream (server/core/log_stream.py) as a long poll, behind the admin
key, for `ripple logs` and a dashboard's log view (docs/logs.md).

`?cursor=<seq>` answers at once with the entries after it, if there are any; else the request waits
up to `timeout` seconds (default 30, at most 60) for one. No cursor: entries from now on;
`cursor=0`: everything still kept. `limit` caps the entries of one answer (default 1000, at most
10,000). The answer: `{"entries": [...], "cursor": <the last seq in it, or the cursor read from>,
"dropped": <entries after the cursor that were dropped before this read>}`. In a worker of
`ripple serve --workers N` the answer covers every worker (server/api/worker_group.py): the cursor
is then a string, which clients pass back as they got it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api import http_api
from server.api.http_api import HttpError, error_response, json_response
from server.api.worker_group import BadCursor, WorkerGroup, parse_cursor
from server.core.runtime import Runtime

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 60.0
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


def _number(request: Request, name: str, default: float | None, low: float, high: float, whole: bool) -> float | None:
    """A query parameter within [low, high]; HttpError 400 naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number of seconds"
        raise HttpError(400, "BadLogsRequest", f"`{name}` must be {kind}, not {raw!r}") from None
    if not low <= value <= high:  # also refuses nan
        raise HttpError(400, "BadLogsRequest", f"`{name}` must be from {low:g} to {high:g}, not {raw}")
    return value


class LogRoutes:
    def __init__(self, runtime: Runtime, group: WorkerGroup | None = None) -> None:
        self.runtime = runtime
        self.group = group

    async def logs(self, request: Request) -> Response:
        try:
            http_api.require_admin_header(request, self.runtime.config.admin_key, "function logs")
            unknown = sorted(set(request.query_params) - {"cursor", "timeout", "limit"})
            if unknown:
                raise HttpError(400, "BadLogsRequest", f"unknown parameter `{unknown[0]}`; "
                                "the parameters are cursor, timeout and limit")
            if self.group is not None:
                try:
                    group_cursor = parse_cursor(request.query_params.get("cursor"))
                except BadCursor as exc:
                    raise HttpError(400, "BadLogsRequest", str(exc)) from None
            else:
                cursor = _number(request, "cursor", None, 0, 2**63 - 1, whole=True)
            timeout = _number(request, "timeout", DEFAULT_TIMEOUT, 0, MAX_TIMEOUT, whole=False)
            limit = _number(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, whole=True)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        assert timeout is not None and limit is not None
        if self.group is not None:
            return json_response(await self.group.logs(group_cursor, int(limit), timeout))
        page = await self.runtime.log_stream.read(None if cursor is None else int(cursor), int(limit), timeout)
        return json_response(page.to_json())
