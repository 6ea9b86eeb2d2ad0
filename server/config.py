"""Runtime configuration, from CLI flags and RIPPLE_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _cors_origins(raw: str | None) -> tuple[str, ...]:
    """RIPPLE_CORS_ORIGINS: comma-separated origins (`https://app.example.com`); empty, unset or
    `*` means any origin."""
    origins = tuple(o.strip().rstrip("/") for o in (raw or "").split(",") if o.strip())
    return () if "*" in origins else origins


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
    query_timeout: float = 10.0
    mutation_timeout: float = 10.0
    action_timeout: float = 600.0
    max_mutation_attempts: int = 40
    ws_compression: bool = False
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the HTTP API; () = any

    @classmethod
    def from_env(cls, **overrides: object) -> Config:
        cfg = cls(
            database_url=os.environ.get("DATABASE_URL") or None,
            db_schema=os.environ.get("RIPPLE_DB_SCHEMA", "ripple"),
            admin_key=os.environ.get("RIPPLE_ADMIN_KEY") or None,
            pool_max=int(os.environ.get("RIPPLE_POOL_MAX", "20")),
            max_body_bytes=int(os.environ.get("RIPPLE_MAX_BODY_BYTES", str(16 * 1024 * 1024))),
            query_timeout=_env_float("RIPPLE_QUERY_TIMEOUT", 10.0),
            mutation_timeout=_env_float("RIPPLE_MUTATION_TIMEOUT", 10.0),
            action_timeout=_env_float("RIPPLE_ACTION_TIMEOUT", 600.0),
            ws_compression=os.environ.get("RIPPLE_WS_COMPRESSION", "").lower() in ("1", "true", "yes", "on"),
            cors_origins=_cors_origins(os.environ.get("RIPPLE_CORS_ORIGINS")),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg
