"""Who the client of one websocket connection is (server/api/sync_ws.py): the identity an
`Authenticate` proves, and a timer that fires when that identity's token expires.

Mutations and actions run as the `Caller` that sent them, which the connection records when
their message arrives: an `Authenticate` read after a mutation does not change who runs it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from server import adminkey
from server.core.auth import dev_issuer
from server.core.auth.claims import acting_as_identity
from server.core.contexts import Identity
from server.core.runtime import Runtime
from server.errors import AuthFailed, redact
from server.sync.protocol import Authenticate, RunMutation

log = logging.getLogger("ripple.sync")


@dataclass(frozen=True)
class Caller:
    identity: Identity | None
    admin: bool

    @property
    def expired(self) -> bool:
        expires_at = self.identity.expires_at if self.identity is not None else None
        return expires_at is not None and time.time() >= expires_at


@dataclass(frozen=True)
class QueuedMutation:
    """A mutation waiting for the connection's worker, with who sent it."""

    request: RunMutation
    caller: Caller

    @property
    def size(self) -> int:
        return self.request.size


class ConnectionAuth:
    """The connection's current identity. `on_expiry` is called (on the event loop) when the
    token it came from expires."""

    def __init__(self, runtime: Runtime, on_expiry: Callable[[], None]) -> None:
        self.runtime = runtime
        self.caller = Caller(None, False)
        self._on_expiry = on_expiry
        self._timer: asyncio.TimerHandle | None = None

    @property
    def identity(self) -> Identity | None:
        return self.caller.identity

    @property
    def admin(self) -> bool:
        return self.caller.admin

    async def switch(self, request: Authenticate) -> str | None:
        """Become who `request` proves: None; else why it proves no one (safe to show the
        client), and the identity stays as it was."""
        try:
            identity, admin = await self._identity_of(request)
        except AuthFailed as exc:
            log.info("websocket authentication refused: %s", exc)
            return str(exc)
        except Exception as exc:
            return redact(exc, "authenticating a websocket client", dev=self.runtime.config.dev)
        self.caller = Caller(identity, admin)
        self.cancel()
        expires_at = identity.expires_at if identity is not None else None
        if expires_at is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, expires_at - time.time()), self._expired)
        return None

    async def _identity_of(self, request: Authenticate) -> tuple[Identity | None, bool]:
        if request.token_type == "None":
            return None, False
        if request.token_type == "Admin":
            try:
                adminkey.verify(self.runtime.config.admin_key, request.value)
            except adminkey.AdminKeyRefused as exc:
                raise AuthFailed(str(exc)) from None
            if request.acting_as is None:
                return None, True
            config = self.runtime.config
            return acting_as_identity(dev_issuer.with_default_issuer(request.acting_as, config.dev, config.base_url)), True
        assert request.value is not None
        return await self.runtime.authenticate(request.value), False

    def _expired(self) -> None:
        self._timer = None
        self._on_expiry()

    def cancel(self) -> None:
        """Stop the expiry timer (the connection ends, or another identity replaces this one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
