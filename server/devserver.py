"""Where a running `ripple dev` listens: `.ripple/dev_server.json` in the app directory holds its
URL and process id while it serves, so that `ripple run` finds it on any port."""

from __future__ import annotations

import json
import os
from pathlib import Path

RECORD = Path(".ripple") / "dev_server.json"


def record(app_dir: Path, url: str) -> None:
    path = app_dir / RECORD
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    partial.replace(path)  # readers never see half a file


def forget(app_dir: Path) -> None:
    """Remove the record if it is this process's (another `ripple dev` may have replaced it)."""
    path = app_dir / RECORD
    found = _read(path)
    if found is not None and found[1] == os.getpid():
        path.unlink(missing_ok=True)


def recorded_url(app_dir: Path) -> str | None:
    """The URL of the `ripple dev` serving `app_dir`, if its process is still alive."""
    found = _read(app_dir / RECORD)
    if found is None or not process_alive(found[1]):
        return None
    return found[0]


def _read(path: Path) -> tuple[str, int] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    url, pid = (data.get("url"), data.get("pid")) if isinstance(data, dict) else (None, None)
    if not isinstance(url, str) or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    return url, pid


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
