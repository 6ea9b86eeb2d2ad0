"""Ripple's Python SDK: an asyncio client for live queries, mutations and actions over the
Convex sync protocol (docs/python-sdk.md)."""

from client_sdk.client import (
    AuthenticationError,
    ConnectionLost,
    ConvexError,
    FunctionError,
    RippleClient,
    RippleClientError,
)
from server.core.values import Int64

__all__ = [
    "AuthenticationError",
    "ConnectionLost",
    "ConvexError",
    "FunctionError",
    "Int64",
    "RippleClient",
    "RippleClientError",
]
