"""Keeping a client authenticated with a token fetcher, as the npm client's
`setAuth(fetchToken, onChange)` does: fetch a token and send it; once the server confirmed it
(a Transition moved the identity version), fetch a fresh one `leeway` seconds before it expires
(from its `iat` and `exp`) and send that; when the server refuses a token (AuthError: a bad
token, or one that expired while connected), fetch one with `force_refresh` and try again, at
most `max_attempts` times in a row before giving up. `on_change(True)` fires when the client
becomes authenticated, `on_change(False)` when it gives up (it then runs unauthenticated).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import orjson

log = logging.getLogger("client_sdk")

# force_refresh -> a JWT, or None when there is none to be had (signed out).
TokenFetcher = Callable[[bool], Awaitable[str | None]]


def refresh_delay(token: str, leeway: float) -> float | None:
    """Seconds until `token` should be replaced: `leeway` before it expires, counted from now
    over its lifetime (`exp - iat`), as the npm client counts; None without those claims."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (IndexError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    return max(0.0, lifetime - leeway)


class TokenRefresher:
    """Runs as a task of the client (`run`); the client reports the server's answers with
    `confirmed()` and `rejected()`, and `use` is how it hands the client a token (None: none)."""

    def __init__(self, fetch: TokenFetcher, use: Callable[[str | None], None],
                 on_change: Callable[[bool], None] | None, *, leeway: float = 10.0, max_attempts: int = 2) -> None:
        self.fetch = fetch
        self.use = use
        self.on_change = on_change
        self.leeway = leeway
        self.max_attempts = max_attempts
        self.authenticated = False
        self._answers: asyncio.Queue[bool] = asyncio.Queue()

    def confirmed(self) -> None:
        self._answers.put_nowait(True)

    def rejected(self) -> None:
        self._answers.put_nowait(False)

    async def run(self) -> None:
        force, attempts = False, 0
        while True:
            token = await self.fetch(force)
            if not token:
                return self._give_up("the token fetcher returned no token")
            self._drain()
            self.use(token)
            if not await self._answers.get():
                attempts += 1
                if attempts > self.max_attempts:
                    return self._give_up("the server refused the fetched tokens")
                force = True
                continue
            attempts = 0
            if not self.authenticated:
                self.authenticated = True
                self._notify(True)
            delay = refresh_delay(token, self.leeway)
            if delay is None:
                log.warning("the auth token has no iat/exp claims: it is not refreshed before it expires")
            await self._until_refresh(None if delay is None else time.monotonic() + delay)
            force = True

    async def _until_refresh(self, deadline: float | None) -> None:
        """Wait until `deadline`, or until the server refuses the token (it expired)."""
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if not await asyncio.wait_for(self._answers.get(), timeout):
                    return
            except TimeoutError:
                return

    def _drain(self) -> None:
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self._answers.get_nowait()

    def _give_up(self, why: str) -> None:
        log.error("authentication failed: %s; continuing unauthenticated", why)
        self.use(None)
        self.authenticated = False
        self._notify(False)

    def _notify(self, authenticated: bool) -> None:
        if self.on_change is not None:
            self.on_change(authenticated)
