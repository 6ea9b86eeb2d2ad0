"""The event loops a server runs on, guarded so that queries and mutations do no network I/O.

The audit hook of server/core/sandbox.py sees the socket module's calls, which the asyncio loop
makes. uvloop connects, resolves host names and starts processes in C (libuv): no audit event, so
without more a query could open a connection. The loops here override the loop methods that do
network I/O or start processes and call `sandbox.refuse` first, which raises ForbiddenOperation
when a query or mutation runs in the caller's context (one context-variable read; no other loop
method is touched). Both loops get the same overrides, so a function behaves the same on either.

It is a guard against mistakes in trusted code, not a security boundary: a function can still
reach the network through a thread without its context, a C extension, or the loop's base class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from server.core import sandbox

_CONNECT = "open a network connection"
_RESOLVE = "resolve a host name"
_LISTEN = "listen for connections"
_SPAWN = "start a process"


class _Guarded(asyncio.AbstractEventLoop):
    """The overrides, each a plain method that checks and then returns the base's coroutine."""

    def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_CONNECT, "loop.create_connection")
        return super().create_connection(*args, **kwargs)

    def create_unix_connection(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_CONNECT, "loop.create_unix_connection")
        return super().create_unix_connection(*args, **kwargs)

    def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_CONNECT, "loop.create_datagram_endpoint")
        return super().create_datagram_endpoint(*args, **kwargs)

    def sock_connect(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_CONNECT, "loop.sock_connect")
        return super().sock_connect(*args, **kwargs)

    def sock_sendto(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse("send network packets", "loop.sock_sendto")
        return super().sock_sendto(*args, **kwargs)

    def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_RESOLVE, "loop.getaddrinfo")
        return super().getaddrinfo(*args, **kwargs)

    def getnameinfo(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_RESOLVE, "loop.getnameinfo")
        return super().getnameinfo(*args, **kwargs)

    def create_server(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_LISTEN, "loop.create_server")
        return super().create_server(*args, **kwargs)

    def create_unix_server(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_LISTEN, "loop.create_unix_server")
        return super().create_unix_server(*args, **kwargs)

    def subprocess_exec(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_SPAWN, "loop.subprocess_exec")
        return super().subprocess_exec(*args, **kwargs)

    def subprocess_shell(self, *args: Any, **kwargs: Any) -> Any:
        sandbox.refuse(_SPAWN, "loop.subprocess_shell")
        return super().subprocess_shell(*args, **kwargs)


GUARDED_METHODS = tuple(name for name in vars(_Guarded) if not name.startswith("_"))


class GuardedAsyncioLoop(_Guarded, asyncio.SelectorEventLoop):
    """The standard library's loop (RIPPLE_EVENT_LOOP=asyncio)."""


def new_asyncio_loop() -> asyncio.AbstractEventLoop:
    return GuardedAsyncioLoop()


def new_uvloop() -> asyncio.AbstractEventLoop:
    """uvloop's loop (the default where uvloop is installed)."""
    return _uvloop_class()()


def _uvloop_class() -> type[asyncio.AbstractEventLoop]:
    global _uvloop_guarded
    if _uvloop_guarded is None:
        import uvloop

        class GuardedUvloop(_Guarded, uvloop.Loop):  # type: ignore[misc]
            pass

        _uvloop_guarded = GuardedUvloop
    return _uvloop_guarded


_uvloop_guarded: type[asyncio.AbstractEventLoop] | None = None

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": new_asyncio_loop,
    "uvloop": new_uvloop,
}


def uvicorn_loop(name: str) -> str:
    """What uvicorn.Config takes as `loop` for the loop called `name`: the import path of its
    factory (uvicorn calls it to make the loop)."""
    factory = LOOP_FACTORIES[name]
    return f"{__name__}:{factory.__name__}"
