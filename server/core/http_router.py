"""HttpRouter: what `functions/http.py` declares, the routes of HTTP actions, and which route a
request goes to. Framework-free: the handlers it holds get a Starlette Request when
server/api/http_actions.py serves them, but nothing here knows that.

Matching follows Convex's router (convex-js `src/server/router.ts`): an exact path route of the
request's method wins; else the longest path prefix of that method; HEAD runs the GET route. A
path that has routes only for other methods is answered 405 with an Allow header (Convex says
404), and a path with none 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from server.errors import AppLoadError, RippleUsageError

HTTP_MODULE = "http"  # functions/http.py
ROUTABLE_METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
RESERVED_PREFIXES = ("/api/", "/_ripple/")  # the HTTP API, storage, sync; health, metrics, dashboard

Handler = Callable[[Any, Any], Awaitable[Any]]


class HttpRouteError(RippleUsageError):
    """A route that cannot be declared: raised where functions/http.py declares it, so the load
    error names the file and line."""


@dataclass(frozen=True)
class Cors:
    """CORS for a route: browsers on `origins` (or any, with "*") may call it, sending `headers`;
    the preflight (OPTIONS) of the route's path is answered for it. `expose_headers`: response
    headers a page may read; `credentials`: allow cookies and HTTP auth (needs listed origins)."""

    origins: Sequence[str]
    headers: Sequence[str] = ("Content-Type", "Authorization")
    expose_headers: Sequence[str] = ()
    credentials: bool = False
    max_age: int = 86400

    def __post_init__(self) -> None:
        if isinstance(self.origins, str) or not self.origins:
            raise HttpRouteError("Cors(origins=...) must be a list of origins such as ['https://app.example.com'] or ['*']")
        for origin in self.origins:
            if origin != "*" and ("://" not in origin or origin.endswith("/")):
                raise HttpRouteError(f"CORS origin {origin!r} must be scheme://host[:port] without a trailing /, or '*'")
        if self.credentials and "*" in self.origins:
            raise HttpRouteError("Cors(credentials=True) needs the origins listed: browsers refuse '*' with credentials")

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/") in self.origins


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the exact path, or the prefix (ending with "/")
    prefix: bool
    handler: Handler
    cors: Cors | None = None

    @property
    def label(self) -> str:
        """How logs, metrics and errors name the route: `POST /hooks/video`, `GET /files/*`."""
        return f"{self.method} {self.path}{'*' if self.prefix else ''}"


@dataclass
class HttpRouter:
    """The routes of an app's HTTP actions (docs/http-actions.md)."""

    exact: dict[str, dict[str, Route]] = field(default_factory=dict)  # path -> method -> route
    prefixes: dict[str, dict[str, Route]] = field(default_factory=dict)  # method -> prefix -> route

    def route(
        self, path: str | None = None, *, path_prefix: str | None = None, methods: Iterable[str] | None = None,
        method: str | None = None, handler: Handler | None = None, cors: Cors | None = None,
    ) -> Callable[[Handler], Handler]:
        """Route `path` (exact) or `path_prefix` and `methods` (or one `method`) to a handler:
        `@http.route("/hooks/video", methods=["POST"])` on `async def handler(ctx, request)`, or
        as Convex spells it, `http.route(path="/x", method="GET", handler=handler)`."""
        chosen = self._methods(methods, method)
        where = self._where(path, path_prefix)

        def register(fn: Handler) -> Handler:
            if not callable(fn):
                raise HttpRouteError(f"the handler of route {where} must be an async function (ctx, request)")
            for m in chosen:
                self._add(Route(m, where, path_prefix is not None, fn, cors))
            return fn

        if handler is not None:
            register(handler)
        return register

    @staticmethod
    def _methods(methods: Iterable[str] | None, method: str | None) -> list[str]:
        if (methods is None) == (method is None):
            raise HttpRouteError("route needs methods=[...] or method=..., and not both")
        chosen = [method] if method is not None else list(methods or ())
        if isinstance(methods, str) or not chosen:
            raise HttpRouteError("methods must be a list of HTTP methods such as ['POST']")
        for m in chosen:
            if m not in ROUTABLE_METHODS:
                raise HttpRouteError(f"{m!r} is not a method HTTP actions route; one of {', '.join(ROUTABLE_METHODS)} "
                                     "(HEAD requests run the GET route)")
        return chosen

    @staticmethod
    def _where(path: str | None, prefix: str | None) -> str:
        if (path is None) == (prefix is None):
            raise HttpRouteError("route needs a path or a path_prefix, and not both")
        where = path if path is not None else prefix
        what = "path" if path is not None else "path_prefix"
        if not isinstance(where, str) or not where.startswith("/"):
            raise HttpRouteError(f"route {what} {where!r} does not start with a /")
        if any(c in where for c in "?#") or any(c.isspace() or not c.isprintable() for c in where):
            raise HttpRouteError(f"route {what} {where!r} is not a URL path (no spaces, control characters, ? or #)")
        if prefix is not None and not where.endswith("/"):
            raise HttpRouteError(f"route path_prefix {where!r} must end with a / (it matches {where}/...)")
        for reserved in RESERVED_PREFIXES:
            if where.startswith(reserved):
                raise HttpRouteError(f"route {what} {where!r} is under {reserved}, which Ripple reserves for its own endpoints")
        return where

    def _add(self, route: Route) -> None:
        table = self.prefixes.setdefault(route.method, {}) if route.prefix else self.exact.setdefault(route.path, {})
        key = route.path if route.prefix else route.method
        if key in table:
            raise HttpRouteError(f"route {route.label} is declared twice")
        table[key] = route

    # -- matching -------------------------------------------------------------------------------

    def lookup(self, path: str, method: str) -> Route | None:
        """The route for a request (HEAD as GET); None when no route of that method matches."""
        method = "GET" if method == "HEAD" else method
        found = self.exact.get(path, {}).get(method)
        if found is not None:
            return found
        best: Route | None = None
        for prefix, route in self.prefixes.get(method, {}).items():
            if path.startswith(prefix) and (best is None or len(prefix) > len(best.path)):
                best = route
        return best

    def allowed(self, path: str) -> list[str]:
        """The methods routed for `path` (for a 405's Allow header): HEAD with GET, OPTIONS where
        a route has CORS (its preflight)."""
        methods = {m for m in ROUTABLE_METHODS if self.lookup(path, m) is not None}
        if "GET" in methods:
            methods.add("HEAD")
        if self.cors_of(path, methods) is not None:
            methods.add("OPTIONS")
        return sorted(methods)

    def cors_of(self, path: str, methods: Iterable[str]) -> Cors | None:
        """The CORS of the first route of `path` among `methods` that has one."""
        for m in methods:
            route = self.lookup(path, m)
            if route is not None and route.cors is not None:
                return route.cors
        return None

    def routes(self) -> list[Route]:
        """Every route: exact ones by path, then prefixes by method (as Convex lists them)."""
        exact = [self.exact[p][m] for p in sorted(self.exact) for m in sorted(self.exact[p])]
        return exact + [self.prefixes[m][p] for m in sorted(self.prefixes) for p in sorted(self.prefixes[m])]


def app_router(module: ModuleType) -> HttpRouter:
    """The `http` router functions/http.py defines."""
    found = getattr(module, "http", None)
    if not isinstance(found, HttpRouter):
        raise AppLoadError(f"functions/{HTTP_MODULE}.py must define `http = HttpRouter()` (from server import HttpRouter)")
    return found
