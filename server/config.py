"""Runtime configuration: CLI flags and RIPPLE_* environment variables.

This is the one place the environment is read for settings; every component takes what it needs
from a `Config` (docs/operations.md lists the variables).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if not raw:
        return default
    return raw.lower() not in ("0", "off", "false", "no")


@dataclass
class SchedulerConfig:
    """The scheduler loop of this process (docs/scheduler.md, Configuration)."""

    enabled: bool = True
    concurrency: int = 10  # jobs running at once in this process
    batch_size: int = 16  # scheduled mutations a worker claims and commits together (1..16)
    poll_seconds: float = 5.0  # safety poll while the listener is connected
    fallback_poll_seconds: float = 1.0  # poll while it is not
    lease_seconds: float = 30.0  # a running action's lease; renewed every third of it
    retention_seconds: float = 7 * 24 * 3600.0  # finished jobs are deleted after this
    shutdown_seconds: float = 10.0  # on shutdown, how long running jobs may take to finish
    horizon_seconds: float = 5 * 365 * 86_400.0  # how far ahead run_after / run_at may schedule; 0: any

    @classmethod
    def from_env(cls) -> SchedulerConfig:
        return cls(
            enabled=_env_flag("RIPPLE_SCHEDULER", True),
            concurrency=max(1, int(_env_float("RIPPLE_SCHEDULER_CONCURRENCY", 10))),
            # at most 16: past 32 rows of one table read, SERIALIZABLE locks the whole table
            # (max_pred_locks_per_relation) and batches conflict (scheduler/batch.py)
            batch_size=min(16, max(1, int(_env_float("RIPPLE_SCHEDULER_BATCH", 16)))),
            poll_seconds=_env_float("RIPPLE_SCHEDULER_POLL_SECONDS", 5.0),
            fallback_poll_seconds=_env_float("RIPPLE_SCHEDULER_FALLBACK_POLL_SECONDS", 1.0),
            lease_seconds=_env_float("RIPPLE_SCHEDULER_LEASE_SECONDS", 30.0),
            retention_seconds=_env_float("RIPPLE_SCHEDULER_RETENTION_SECONDS", 7 * 24 * 3600.0),
            shutdown_seconds=_env_float("RIPPLE_SCHEDULER_SHUTDOWN_SECONDS", 10.0),
            horizon_seconds=_env_float("RIPPLE_SCHEDULER_HORIZON_SECONDS", 5 * 365 * 86_400.0),
        )

    @property
    def maintenance_seconds(self) -> float:
        return max(0.05, min(self.lease_seconds / 3.0, 10.0))


def _cors_origins(raw: str | None) -> tuple[str, ...]:
    """RIPPLE_CORS_ORIGINS: comma-separated origins (`https://app.example.com`); empty, unset or
    `*` means any origin."""
    origins = tuple(o.strip().rstrip("/") for o in (raw or "").split(",") if o.strip())
    return () if "*" in origins else origins


EVENT_LOOPS = ("uvloop", "asyncio")


def _event_loop(raw: str | None) -> str:
    """RIPPLE_EVENT_LOOP: `uvloop` (the default; the asyncio loop where uvloop is not installed)
    or `asyncio`."""
    name = (raw or "uvloop").strip().lower()
    if name not in EVENT_LOOPS:
        raise ValueError(f"RIPPLE_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, not {raw!r}")
    return name


VECTOR_SEARCH_MODES = ("auto", "exact")


def _vector_search(raw: str | None) -> str:
    """RIPPLE_VECTOR_SEARCH: `auto` (pgvector's HNSW index where there is one, else an exact
    scan) or `exact` (always an exact scan; docs/search.md)."""
    mode = (raw or "auto").strip().lower()
    if mode not in VECTOR_SEARCH_MODES:
        raise ValueError(f"RIPPLE_VECTOR_SEARCH must be one of {', '.join(VECTOR_SEARCH_MODES)}, not {raw!r}")
    return mode


def _ef_search() -> int:
    """RIPPLE_VECTOR_EF_SEARCH: 1 to 1000 (pgvector's range for hnsw.ef_search)."""
    value = _env_int("RIPPLE_VECTOR_EF_SEARCH", 100)
    if value > 1000:
        raise ValueError(f"RIPPLE_VECTOR_EF_SEARCH must be at most 1000 (pgvector's limit), not {value}")
    return value


def _ping_seconds() -> float:
    """RIPPLE_WS_PING_SECONDS: above 0. The official clients reconnect after 60 s without a
    message, so more than about 30 s risks needless reconnects of idle clients."""
    raw = os.environ.get("RIPPLE_WS_PING_SECONDS")
    try:
        value = float(raw) if raw else 15.0
    except ValueError:
        raise ValueError(f"RIPPLE_WS_PING_SECONDS must be a number of seconds, not {raw!r}") from None
    if not value > 0:
        raise ValueError(f"RIPPLE_WS_PING_SECONDS must be more than 0, not {raw!r}")
    return value


MiB = 1024 * 1024


@dataclass
class WebsocketLimits:
    """What one websocket connection may hold (docs/operations.md, Limits). The defaults are far
    above what a working client needs, and in line with Convex's own per-connection bounds
    (1000 waiting mutations, 1000 actions in flight)."""

    outbox_bytes: int = 8 * MiB  # responses waiting for the client; beyond, mutations wait
    pending_mutations: int = 1000  # received, not run yet; beyond, the connection is closed
    pending_mutation_bytes: int = 16 * MiB  # their messages' size; beyond, reading pauses
    concurrent_actions: int = 1000  # running (or handing over their result); beyond, refused
    subscriptions: int = 1000  # queries in the query set; beyond, the connection is closed

    @classmethod
    def from_env(cls) -> WebsocketLimits:
        d = cls()
        return cls(
            outbox_bytes=_env_int("RIPPLE_WS_MAX_OUTBOX_BYTES", d.outbox_bytes),
            pending_mutations=_env_int("RIPPLE_WS_MAX_PENDING_MUTATIONS", d.pending_mutations),
            pending_mutation_bytes=_env_int("RIPPLE_WS_MAX_PENDING_MUTATION_BYTES", d.pending_mutation_bytes),
            concurrent_actions=_env_int("RIPPLE_WS_MAX_CONCURRENT_ACTIONS", d.concurrent_actions),
            subscriptions=_env_int("RIPPLE_WS_MAX_SUBSCRIPTIONS", d.subscriptions),
        )


@dataclass
class StorageConfig:
    """Where stored files' bytes live (docs/storage.md, docs/operations.md): `local` disk under
    `local_dir` (default `<app>/.ripple/storage`), or `s3`, any S3-compatible endpoint (MinIO,
    AWS S3, R2) through the `minio` SDK; its bucket is created when missing."""

    backend: str = "local"
    local_dir: Path | None = None
    s3_endpoint: str = ""  # host[:port], as the minio SDK takes it
    s3_bucket: str = "ripple"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str | None = None
    s3_secure: bool = True  # TLS to the endpoint
    s3_retries: int = 5  # more tries of a call after a failed connection or a 5xx answer (the SDK's 5)
    max_upload_bytes: int = 5 * 1024**3  # through an upload URL; over it: 413
    public_url: str | None = None  # base of the URLs functions hand out; default http://<host>:<port>

    @classmethod
    def from_env(cls) -> StorageConfig:
        backend = os.environ.get("RIPPLE_STORAGE", "local")
        if backend not in ("local", "s3"):
            raise ValueError(f"RIPPLE_STORAGE must be 'local' or 's3', not {backend!r}")
        local_dir = os.environ.get("RIPPLE_STORAGE_DIR")
        return cls(
            backend=backend,
            local_dir=Path(local_dir) if local_dir else None,
            s3_endpoint=os.environ.get("RIPPLE_S3_ENDPOINT", ""),
            s3_bucket=os.environ.get("RIPPLE_S3_BUCKET", "ripple"),
            s3_access_key=os.environ.get("RIPPLE_S3_ACCESS_KEY", ""),
            s3_secret_key=os.environ.get("RIPPLE_S3_SECRET_KEY", ""),
            s3_region=os.environ.get("RIPPLE_S3_REGION") or None,
            s3_secure=_env_flag("RIPPLE_S3_SECURE", True),
            s3_retries=_env_int("RIPPLE_S3_RETRIES", 5, minimum=0),
            max_upload_bytes=_env_int("RIPPLE_STORAGE_MAX_UPLOAD_BYTES", 5 * 1024**3),
            public_url=os.environ.get("RIPPLE_PUBLIC_URL") or None,
        )


@dataclass
class AuthConfig:
    """Verifying users' tokens (docs/auth.md, Settings)."""

    clock_skew_seconds: float = 5.0  # leeway on exp, nbf and iat, as Convex allows custom JWTs
    max_token_bytes: int = 16 * 1024  # longer tokens are refused before any parsing
    fetch_timeout_seconds: float = 5.0  # one request for a provider's discovery document or keys
    keys_min_refresh_seconds: float = 10.0  # an unknown `kid` refetches a provider's keys at most this often
    keys_max_age_seconds: float = 3600.0  # keys older than this are fetched again

    @classmethod
    def from_env(cls) -> AuthConfig:
        d = cls()
        return cls(
            clock_skew_seconds=_env_float("RIPPLE_AUTH_CLOCK_SKEW_SECONDS", d.clock_skew_seconds),
            max_token_bytes=_env_int("RIPPLE_AUTH_MAX_TOKEN_BYTES", d.max_token_bytes),
            fetch_timeout_seconds=_env_float("RIPPLE_AUTH_FETCH_TIMEOUT_SECONDS", d.fetch_timeout_seconds),
            keys_min_refresh_seconds=_env_float("RIPPLE_AUTH_KEYS_MIN_REFRESH_SECONDS", d.keys_min_refresh_seconds),
            keys_max_age_seconds=_env_float("RIPPLE_AUTH_KEYS_MAX_AGE_SECONDS", d.keys_max_age_seconds),
        )


def connect_url(host: str, port: int) -> str:
    """The URL a client on this machine uses to reach a server listening on host:port."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Config:
    app_dir: Path = field(default_factory=Path.cwd)
    database_url: str | None = None
    db_schema: str = "ripple"
    dev: bool = False
    host: str = "127.0.0.1"
    port: int = 3210
    admin_key: str | None = None
    pool_min: int = 2
    pool_max: int = 20
    max_body_bytes: int = 16 * 1024 * 1024
    http_action_max_body_bytes: int = 20 * MiB  # a request body an HTTP action may read; over it: 413
    query_timeout: float = 10.0
    mutation_timeout: float = 10.0
    action_timeout: float = 600.0
    # How long a function (any kind) may hold the event loop without awaiting before it is
    # interrupted; 0: never (server/core/watchdog.py, docs/operations.md, Limits).
    blocking_limit: float = 1.0
    blocked_loop_warning: float = 0.1  # log and count every block of the event loop this long; 0: never
    max_mutation_attempts: int = 40
    database_retry_seconds: float = 10.0  # how long a call rides out a lost database connection
    ws_compression: bool = False
    # How often every websocket connection gets the keep-alive Ping (server/api/sync_ws.py);
    # clients take 60 s without a message for a lost connection.
    ws_ping_seconds: float = 15.0
    ws_limits: WebsocketLimits = field(default_factory=WebsocketLimits)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the HTTP API; () = any
    event_loop: str = "uvloop"  # or "asyncio" (server/loops.py)
    vector_search: str = "auto"  # or "exact": how ctx.vector_search runs (docs/search.md)
    # `ripple dev --codegen`: write the TypeScript types here after each complete load (server/codegen.py).
    codegen_dir: Path | None = None
    vector_ef_search: int = 100  # pgvector's hnsw.ef_search for approximate searches (at least their limit)
    # The log stream's memory (server/core/log_stream.py, docs/logs.md): its newest entries, at most
    # this many and about this many bytes of lines and errors; older ones are dropped.
    log_stream_entries: int = 10_000
    log_stream_bytes: int = 32 * MiB
    # The query result cache's memory (server/core/query_cache.py, docs/query-cache.md); 0: off.
    query_cache_bytes: int = 64 * MiB
    # Mutations that keep conflicting over the same keys take turns in this process (core/hot_keys.py).
    hot_key_queue: bool = True
    # ... and those queued on the same keys run together in one transaction and one commit
    # (core/group_commit.py); needs hot_key_queue.
    group_commit: bool = True
    group_commit_seconds: float = 0.05  # a group starts no member after running this long
    # Connections a live-query tick re-runs its queries over at most, sharing its snapshot
    # (server/core/tick_runs.py, docs/live-queries.md); 1: one connection, one run at a time.
    live_query_parallelism: int = 4

    @property
    def base_url(self) -> str:
        """The URL clients reach this server at: the public URL when one is configured (a proxy
        in front, `--public-url`), else the listening address as seen from this machine. Stored
        files' URLs, the dev issuer and CONVEX_SITE_URL / CONVEX_CLOUD_URL all start with it."""
        if self.storage.public_url:
            return self.storage.public_url.rstrip("/")
        return connect_url(self.host, self.port)

    @classmethod
    def from_env(cls, **overrides: object) -> Config:
        cfg = cls(
            database_url=os.environ.get("DATABASE_URL") or None,
            db_schema=os.environ.get("RIPPLE_DB_SCHEMA", "ripple"),
            admin_key=os.environ.get("RIPPLE_ADMIN_KEY") or None,
            pool_max=int(os.environ.get("RIPPLE_POOL_MAX", "20")),
            max_body_bytes=int(os.environ.get("RIPPLE_MAX_BODY_BYTES", str(16 * 1024 * 1024))),
            http_action_max_body_bytes=_env_int("RIPPLE_HTTP_ACTION_MAX_BODY_BYTES", 20 * MiB),
            query_timeout=_env_float("RIPPLE_QUERY_TIMEOUT", 10.0),
            mutation_timeout=_env_float("RIPPLE_MUTATION_TIMEOUT", 10.0),
            action_timeout=_env_float("RIPPLE_ACTION_TIMEOUT", 600.0),
            database_retry_seconds=_env_float("RIPPLE_DATABASE_RETRY_SECONDS", 10.0),
            blocking_limit=_env_float("RIPPLE_BLOCKING_LIMIT", 1.0),
            blocked_loop_warning=_env_float("RIPPLE_BLOCKED_LOOP_WARNING", 0.1),
            ws_compression=_env_flag("RIPPLE_WS_COMPRESSION", False),
            ws_ping_seconds=_ping_seconds(),
            ws_limits=WebsocketLimits.from_env(),
            scheduler=SchedulerConfig.from_env(),
            storage=StorageConfig.from_env(),
            auth=AuthConfig.from_env(),
            cors_origins=_cors_origins(os.environ.get("RIPPLE_CORS_ORIGINS")),
            event_loop=_event_loop(os.environ.get("RIPPLE_EVENT_LOOP")),
            vector_search=_vector_search(os.environ.get("RIPPLE_VECTOR_SEARCH")),
            vector_ef_search=_ef_search(),
            log_stream_entries=_env_int("RIPPLE_LOG_STREAM_ENTRIES", 10_000),
            log_stream_bytes=_env_int("RIPPLE_LOG_STREAM_BYTES", 32 * MiB),
            query_cache_bytes=_env_int("RIPPLE_QUERY_CACHE_BYTES", 64 * MiB, minimum=0),
            hot_key_queue=_env_flag("RIPPLE_HOT_KEY_QUEUE", True),
            group_commit=_env_flag("RIPPLE_GROUP_COMMIT", True),
            group_commit_seconds=max(0.0, _env_float("RIPPLE_GROUP_COMMIT_SECONDS", 0.05)),
            live_query_parallelism=_env_int("RIPPLE_LIVE_QUERY_PARALLELISM", 4),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg
