"""The Convex HTTP API: what `ConvexHttpClient` (npm) and `ConvexHttpClient` (PyPI) call.

Success and function errors are HTTP 200 with `{"status": ...}` (what both official clients
accept); mistakes by the caller are 4xx `{"code", "message"}`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from server import adminkey
from server.api import offload
from server.core.auth import dev_issuer
from server.core.auth.claims import acting_as_identity
from server.core.contexts import Identity
from server.core.query_cache import CacheKey
from server.core.registry import Kind
from server.core.runtime import Runtime
from server.core.values import (
    dumps,
    from_client_json,
    from_convex_json,
    to_plain_json,
    to_wire_json,
)
from server.errors import (
    AuthFailed,
    DatabaseUnavailable,
    FunctionFailure,
    FunctionNotFound,
    RippleUsageError,
    ValueValidationError,
    shown,
)
from server.wire import decode_ts, encode_ts, loads

FORMATS = ("json", "convex_encoded_json")


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def value_json(value: Any) -> orjson.Fragment:
    """A value for a response body, its objects' fields in Convex's order (the envelope keeps
    Convex's: status, value, logLines)."""
    return orjson.Fragment(dumps(value))


def success_body(value: Any, log_lines: list[str], fmt: str) -> bytes:
    """The body answering a call that returned `value` (Python values) in `fmt`."""
    wire = to_wire_json(value) if fmt == "convex_encoded_json" else to_plain_json(value)
    return orjson.dumps({"status": "success", "value": value_json(wire), "logLines": log_lines})


QUERY_NOTE = "ripple.query_note"  # the scope key of a QueryNote


@dataclass(slots=True)
class QueryNote:
    """Between the HTTP fast path (server/api/cached_responses.py) and `HttpApi.run`, for one
    `POST /api/query` the fast path handed on (in the ASGI scope, under QUERY_NOTE): whether
    the fast path asked the query cache already (a miss it counted), and, once the call
    succeeded at the latest ts, what it was: the app it ran under, its query cache key, the
    response format, and when the caller's identity expires (None: it does not)."""

    looked_up: bool = False
    learned: tuple[object, CacheKey, str, float | None] | None = None


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"code": code, "message": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HttpError(400, "BadRequest", "Content-Length is not a number")
        if int(declared) > limit:
            raise HttpError(413, "BodyTooLarge", f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "BodyTooLarge", f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise HttpError(400, "BadJsonBody", "request body is empty; send a JSON object")
    return body


def parse_json(body: bytes) -> Any:
    try:
        return loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "BadJsonBody", f"request body is not valid JSON: {exc}") from exc


Call = tuple[str, Any, str]  # path, arguments (Python values), format


def decode_call(body: bytes, path_override: str | None) -> tuple[Any, Call | HttpError]:
    """A request body -> (the JSON, the call it asks for). Invalid JSON raises; a call that
    cannot be made is returned, to be raised after the Authorization header is checked (as
    before, a bad header is reported first). Pure: runs on the decode thread (offload.py)."""
    data = parse_json(body)
    try:
        return data, HttpApi.parse_call(data, path_override)
    except HttpError as exc:
        return data, exc


def parse_ts(raw: Any) -> int:
    """A `ts` from a request: as /api/query_ts encodes it, or a plain non-negative integer."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    try:
        return decode_ts(raw)
    except ValueError:
        raise HttpError(400, "InvalidTimestamp", f"`ts` must be a timestamp from /api/query_ts, not {shown(repr(raw))}") from None


def not_ready(runtime: Runtime, load_error: str | None) -> Response:
    """The answer while no version of the app is loaded: why, in dev mode, when loading failed."""
    if load_error is not None and runtime.config.dev:
        return error_response(503, "AppLoadFailed", f"the app failed to load: {load_error}")
    return error_response(503, "NotReady", "functions are not loaded yet")


def require_admin_key(configured: str | None, presented: str | None) -> None:
    """adminkey.verify, refusals answered 401."""
    try:
        adminkey.verify(configured, presented)
    except adminkey.AdminKeyRefused as exc:
        raise HttpError(401, exc.code, str(exc)) from None


def require_admin_header(request: Request, configured: str | None, what: str) -> None:
    """The admin endpoints' check: `Authorization: Convex <admin key>`; `what` names what needs it."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme and scheme != "Convex":
        raise HttpError(401, "BadAuthHeader", f"{what} need the admin key: `Authorization: Convex <admin key>`")
    require_admin_key(configured, key)


class HttpApi:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- request parsing --------------------------------------------------------------------

    async def caller(self, request: Request) -> tuple[Identity | None, bool]:
        """(identity, is_admin) from the Authorization header."""
        header = request.headers.get("authorization")
        if not header:
            return None, False
        scheme, _, value = header.partition(" ")
        if scheme == "Convex":
            return self.admin_caller(value.strip())
        if scheme == "Bearer":
            try:
                return await self.runtime.authenticate(value.strip()), False
            except AuthFailed as exc:
                raise HttpError(401, "Unauthenticated", str(exc)) from None
        raise HttpError(401, "BadAuthHeader", "Authorization must be `Bearer <token>` or `Convex <admin key>`")

    def admin_caller(self, value: str) -> tuple[Identity | None, bool]:
        """`Convex <admin key>`, or `Convex <admin key>:<base64 of a JSON identity>` for an admin
        acting as that user (as Convex's dashboard sends it). In dev mode an identity with a
        subject and no issuer (nor tokenIdentifier) gets the development issuer's: the same user
        as that issuer's token for the subject (`ripple run --identity '{"subject": "u1"}'`)."""
        key = self.runtime.config.admin_key
        given, _, acting_as = value.partition(":") if key is None or ":" not in key else (value, "", "")
        require_admin_key(key, given)
        if not acting_as:
            return None, True
        try:
            attributes = orjson.loads(base64.b64decode(acting_as, validate=True))
            if not isinstance(attributes, dict):
                raise ValueError("not a JSON object")
            config = self.runtime.config
            return acting_as_identity(dev_issuer.with_default_issuer(attributes, config.dev, config.base_url)), True
        except (ValueError, AuthFailed) as exc:  # binascii.Error and JSON errors are ValueErrors
            raise HttpError(401, "BadAdminKey", f"the identity to act as (after the admin key) is not valid: {exc}") from None

    @staticmethod
    def parse_call(body: Any, path_override: str | None = None) -> Call:
        if not isinstance(body, dict):
            raise HttpError(400, "BadJsonBody", "request body must be a JSON object with `path` and `args`")
        if body.get("componentPath"):
            raise HttpError(400, "BadJsonBody", "components are not supported: `componentPath` must be empty")
        unknown = set(body) - {"path", "args", "format", "ts", "componentPath"}
        if unknown:
            raise HttpError(400, "BadJsonBody", f"unexpected field(s) in request body: {shown(', '.join(sorted(unknown)))}")
        fmt = body.get("format", "json")
        if fmt not in FORMATS:
            raise HttpError(400, "BadFormat", f"`format` must be 'json' or 'convex_encoded_json', not {shown(repr(fmt))}")
        path = path_override if path_override is not None else body.get("path")
        if not isinstance(path, str) or not path:
            raise HttpError(400, "BadJsonBody", "`path` must be the function path, e.g. 'videos:list'")
        raw_args = body.get("args", {})
        if isinstance(raw_args, list):
            if len(raw_args) != 1:
                raise HttpError(400, "BadJsonBody", "`args` as an array must hold exactly one object")
            raw_args = raw_args[0]
        if not isinstance(raw_args, dict):
            raise HttpError(400, "BadJsonBody", "`args` must be a JSON object")
        try:
            args = from_client_json(raw_args, encoded=fmt == "convex_encoded_json", path="args")
        except ValueValidationError as exc:
            raise HttpError(400, "BadConvexValue", f"invalid argument value: {exc}") from exc
        return path, args, fmt

    # -- endpoint bodies --------------------------------------------------------------------

    async def run(self, request: Request, kind: Kind | None, path_override: str | None = None, at_ts: bool = False) -> Response:
        app = self.runtime.app  # what a QueryNote learns is true of this app (and its auth config) only
        try:
            raw = await read_body(request, self.runtime.config.max_body_bytes)
            body, call = await offload.decode(len(raw), decode_call, raw, path_override)
            del raw
            identity, admin = await self.caller(request)
            if isinstance(call, HttpError):
                raise call
            path, args, fmt = call
            ts = parse_ts(body.get("ts")) if at_ts else None
            if ts is not None:
                latest = await self.runtime.latest_ts()
                if ts > latest:
                    raise HttpError(400, "InvalidTimestamp", f"timestamp {ts} is ahead of the server's latest ({latest})")
            if kind is None:
                kind = self.runtime.app.registry.resolve(path, allow_internal=admin).kind
            note: QueryNote | None = request.scope.get(QUERY_NOTE)
            # The HTTP API reports no commit ts: skip reading it back.
            outcome = await self.runtime.call(kind, path, args, identity, allow_internal=admin, at_ts=ts, commit_ts=False,
                                              looked_up=note is not None and note.looked_up)
            if note is not None and outcome.cache_key is not None and self.runtime.app is app:
                note.learned = (app, outcome.cache_key, fmt, identity.expires_at if identity is not None else None)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except FunctionNotFound as exc:
            return error_response(404, exc.code, str(exc))
        except RippleUsageError as exc:
            return error_response(400, exc.code, str(exc))
        except DatabaseUnavailable as exc:  # not the function's failure: see docs/operations.md
            return error_response(503, exc.code, exc.message)
        except FunctionFailure as failure:
            body_out: dict[str, Any] = {
                "status": "error",
                "errorMessage": failure.message,
                "logLines": failure.log_lines,
            }
            if failure.has_data:
                data = failure.data if fmt == "convex_encoded_json" else to_plain_json(from_convex_json(failure.data))
                body_out["errorData"] = value_json(data)
            return json_response(body_out)
        return Response(success_body(outcome.value, outcome.log_lines, fmt), media_type="application/json")

    async def query_ts(self, request: Request) -> Response:
        return json_response({"ts": encode_ts(await self.runtime.latest_ts())})
