"""Ripple client SDKs. The Python asyncio client for the Convex sync protocol (live queries)
arrives with the live-queries work; until then, use the HTTP API (docs/http-api.md) or the
official PyPI `convex` client's HTTP mode."""
