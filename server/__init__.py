"""Ripple: a reactive backend runtime that speaks the Convex protocol.

User code imports its building blocks from here (see docs/functions.md). Importing them loads
no database driver and no server: only the modules that define them (a test checks it).
"""

from server.core.absent import UNSET
from server.core.contexts import ActionCtx, Identity, MutationCtx, QueryCtx
from server.core.http_router import Cors, HttpRouter
from server.core.registry import (
    FunctionDef,
    action,
    internal_action,
    internal_mutation,
    internal_query,
    mutation,
    query,
)
from server.core.scheduler.crons import Crons
from server.core.schema import Schema, SearchIndex, Table, VectorIndex
from server.core.validation import Id
from server.core.values import Int64
from server.core.webhooks import WebhookVerificationError, verify_hmac, verify_webhook
from server.errors import ConvexError

__all__ = [
    "UNSET",
    "ActionCtx",
    "ConvexError",
    "Cors",
    "Crons",
    "FunctionDef",
    "HttpRouter",
    "Id",
    "Identity",
    "Int64",
    "MutationCtx",
    "QueryCtx",
    "Schema",
    "SearchIndex",
    "Table",
    "VectorIndex",
    "WebhookVerificationError",
    "action",
    "internal_action",
    "internal_mutation",
    "internal_query",
    "mutation",
    "query",
    "verify_hmac",
    "verify_webhook",
]
