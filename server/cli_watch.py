"""`ripple run --watch`, and how `ripple run` shows a value."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any


def as_js(value: Any) -> Any:
    """A result shown as JavaScript shows it: the wire writes every number as a float (`2.0`),
    a person reads `2`."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list):
        return [as_js(v) for v in value]
    if isinstance(value, dict):
        return {k: as_js(v) for k, v in value.items()}
    return value


def watch(url: str, source: str, path: str, fn_args: Any, key: str | None, acting_as: dict[str, Any] | None) -> int:
    """`ripple run --watch`: the query's result, then again after every change, over the sync
    protocol (as an admin acting as `acting_as` when there is an admin key), until Ctrl-C."""
    from client_sdk import RippleClient, RippleClientError

    try:  # the client would keep trying to connect: say at once that nothing answers
        urllib.request.urlopen(f"{url.rstrip('/')}/_ripple/health", timeout=10).close()
    except urllib.error.HTTPError:
        pass  # something answers: the subscription tells what is wrong
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"ripple run --watch: no Ripple server at {url} ({source}): {reason}; start one with `ripple dev`, "
              "or choose the server with --url or RIPPLE_URL", file=sys.stderr)
        return 1

    async def follow() -> None:
        async with RippleClient(url, admin_key=key, acting_as=acting_as) as client:
            async for value in client.subscribe(path, fn_args):
                print(json.dumps(as_js(value), indent=2), flush=True)

    # Ctrl-C (or SIGTERM) ends it at once, with status 0: a subscription has nothing to undo, and
    # every result printed was flushed. (Letting asyncio cancel the client and close its socket
    # could wait on the connection.)
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: os._exit(0))
    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        return 0
    except RippleClientError as exc:
        print(f"ripple run --watch: {exc}", file=sys.stderr)
        return 1
    return 0
