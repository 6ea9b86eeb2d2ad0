"""The admin key: it alone may change environment variables, call internal functions and use
the admin endpoints. `verify` is the one check every transport uses (HTTP API, websocket
`Authenticate` with tokenType Admin, the environment-variable endpoints), in constant time;
`dev_key` makes and keeps the key of `ripple dev` in `.ripple/admin_key`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from server.errors import RippleUsageError

KEY_FILE = Path(".ripple") / "admin_key"
HOW_TO_CONFIGURE = ("start `ripple serve` with RIPPLE_ADMIN_KEY set (or --admin-key); `ripple dev` makes one in "
                    f"{KEY_FILE}")


class AdminKeyRefused(RippleUsageError):
    """No admin key where one is needed, a wrong one, or a server without one."""

    code = "BadAdminKey"

    def __init__(self, message: str, code: str = "BadAdminKey") -> None:
        super().__init__(message)
        self.code = code


def verify(configured: str | None, presented: str | None) -> None:
    """Does `presented` prove the caller holds the admin key `configured`? AdminKeyRefused
    says why not. The digests compared have one length, so the time taken tells nothing about
    the key, not even its length."""
    if not configured:
        raise AdminKeyRefused(f"this server has no admin key configured, so it refuses admin requests; {HOW_TO_CONFIGURE}",
                              "AdminKeyNotConfigured")
    if not presented:
        raise AdminKeyRefused("this needs the admin key (HTTP: `Authorization: Convex <admin key>`)", "MissingAdminKey")
    given = hashlib.sha256(presented.strip().encode("utf-8", "surrogatepass")).digest()
    if not secrets.compare_digest(given, hashlib.sha256(configured.encode()).digest()):
        raise AdminKeyRefused("the admin key is not valid")


def dev_key(app_dir: Path) -> tuple[str, bool]:
    """The key of the `ripple dev` deployment in `app_dir`, and whether this call created it.

    The file is created with mode 0600 from the start (never readable by others, not even for
    a moment) and complete when it appears: the key is written to a temporary file opened with
    O_CREAT | O_EXCL, which is then hard-linked into place. Of two starts racing, one links
    its key; the other finds the link taken and reads that key."""
    path = app_dir / KEY_FILE
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        partial = path.with_name(f".admin_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(partial, path)
                return path.read_text().strip(), True
            except FileExistsError:
                pass  # another start won the race: its key is the key
        finally:
            partial.unlink(missing_ok=True)
    return path.read_text().strip(), False
