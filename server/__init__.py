"""Ripple: a reactive backend runtime that speaks the Convex protocol.

User code imports its building blocks from here (see docs/functions.md). Importing them loads
no database driver and no server: only the modules that define them (a test checks it). Each
name is loaded at its first use (`from server import query` loads the registry), so importing
the package for anything else, as every `ripple` command does (`server.cli`), loads none of
them: `ripple env list` starts in about 0.15 s instead of 0.45 s.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see: the names as imported
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

_WHERE = {  # each public name -> the module that defines it
    "UNSET": "server.core.absent",
    "ActionCtx": "server.core.contexts",
    "Identity": "server.core.contexts",
    "MutationCtx": "server.core.contexts",
    "QueryCtx": "server.core.contexts",
    "Cors": "server.core.http_router",
    "HttpRouter": "server.core.http_router",
    "FunctionDef": "server.core.registry",
    "action": "server.core.registry",
    "internal_action": "server.core.registry",
    "internal_mutation": "server.core.registry",
    "internal_query": "server.core.registry",
    "mutation": "server.core.registry",
    "query": "server.core.registry",
    "Crons": "server.core.scheduler.crons",
    "Schema": "server.core.schema",
    "SearchIndex": "server.core.schema",
    "Table": "server.core.schema",
    "VectorIndex": "server.core.schema",
    "Id": "server.core.validation",
    "Int64": "server.core.values",
    "WebhookVerificationError": "server.core.webhooks",
    "verify_hmac": "server.core.webhooks",
    "verify_webhook": "server.core.webhooks",
    "ConvexError": "server.errors",
}

if not TYPE_CHECKING:  # (hidden from type checkers: they would take any name for one of these)

    def __getattr__(name: str) -> Any:
        """A public name at its first use, imported from its module and kept here."""
        if name not in _WHERE:
            raise AttributeError(f"module 'server' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_WHERE})


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
