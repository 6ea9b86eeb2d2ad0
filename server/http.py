"""Everything an HTTP action (functions/http.py) uses, in one import: the router and its CORS,
webhook verification, and Starlette's Request and responses.

    from server.http import HttpRouter, Request, Response, JSONResponse, verify_webhook

The router and the webhook helpers are also exported by `server` (which loads no web framework);
this module adds Starlette's types.
"""

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from server.core.http_router import Cors, HttpRouter
from server.core.webhooks import (
    WebhookVerificationError,
    verify_hmac,
    verify_hmac_signature,
    verify_standard_webhook,
    verify_webhook,
)

__all__ = [
    "Cors",
    "HttpRouter",
    "JSONResponse",
    "PlainTextResponse",
    "Request",
    "Response",
    "StreamingResponse",
    "WebhookVerificationError",
    "verify_hmac",
    "verify_hmac_signature",
    "verify_standard_webhook",
    "verify_webhook",
]
