"""Ripple's exceptions. Three kinds stay apart:

- ConvexError: an application error a client may catch and read (`data` reaches it as errorData);
- RippleUsageError and its children: the caller or the app developer did something wrong
  (bad arguments, unknown function, misuse of the document API); the message is safe to show
  to the caller it concerns (inside a function it is the function's failure, see below);
- anything else: an internal failure; clients see only a redacted message with a request id
  outside dev mode. `redact` is the one place that decides what such a client sees.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import site
import sys
import traceback
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger("ripple.errors")


MAX_SHOWN_CHARS = 200


def shown(text: str) -> str:
    """A caller-supplied string (a function path, a session id) as error messages echo it: whole
    up to MAX_SHOWN_CHARS characters, else its start and its length."""
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    return f"{text[:MAX_SHOWN_CHARS]}... ({len(text)} characters)"


class RippleError(Exception):
    """Base of every exception Ripple raises on purpose."""


class ConvexError(RippleError):
    """An application error carrying `data`; clients receive it as `errorData`."""

    def __init__(self, data: Any = None) -> None:
        self.data = data
        super().__init__(data if isinstance(data, str) else repr(data))


class RippleUsageError(RippleError):
    """Misuse by a caller (bad arguments, unknown function: answered with a 4xx naming what was
    wrong) or by function code (a bad index range, too many documents read...). Raised inside a
    function it is that function's failure: shown in dev mode, redacted like any other exception
    in production."""

    code = "BadRequest"


class ValueValidationError(RippleUsageError):
    """A value is not a valid Convex value (or does not fit a schema)."""

    code = "BadConvexValue"


class ArgumentValidationError(RippleUsageError):
    code = "ArgumentValidationError"


class ReturnValidationError(RippleUsageError):
    code = "ReturnValidationError"


class DocumentValidationError(RippleUsageError):
    code = "DocumentValidationError"


class FunctionNotFound(RippleUsageError):
    code = "FunctionNotFound"


class WrongFunctionKind(RippleUsageError):
    code = "WrongFunctionKind"


class IdempotencyKeyReused(RippleUsageError):
    """A mutation resent under a (session id, request id) that the same caller already used for
    another function or other arguments: refused without running anything."""

    code = "IdempotencyKeyReused"


class StaleTimestamp(RippleUsageError):
    """A query at an old timestamp cannot be answered: what it read changed since."""

    code = "InvalidTimestamp"


class AuthFailed(RippleError):
    """A token that does not authenticate anyone: why, in words safe to show the client."""


class AppLoadError(RippleError):
    """Importing the app's code failed; the message names the file, line and error."""


class FunctionUnavailable(FunctionNotFound):
    """The function's module failed to load (dev mode serves the modules that did)."""

    code = "FunctionUnavailable"


class SchemaError(RippleError):
    """The schema is invalid, or existing documents violate it. Refuses start-up."""


class InvalidIdError(RippleUsageError):
    code = "InvalidId"


class ForbiddenOperation(RippleUsageError):
    """Something the current function kind may not do (network I/O in a query, writes in one)."""

    code = "ForbiddenOperation"


class LimitExceeded(RippleUsageError):
    code = "LimitExceeded"


class PaginationError(ConvexError):
    """A bad pagination cursor; clients receive `{"paginationError": kind}` as data and reset."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__({"paginationError": kind})
        self.message = message

    def __str__(self) -> str:
        return self.message


class FunctionRaisedBaseException(RippleError):
    """App code raised SystemExit, KeyboardInterrupt, GeneratorExit or a CancelledError of its
    own: it is that function's error (redacted like any other), never the server's."""


class FunctionTimedOut(RippleError):
    """A function ran past one of its time limits: its whole run (RIPPLE_*_TIMEOUT) or holding the
    event loop without awaiting (RIPPLE_BLOCKING_LIMIT). The message names only the function and
    the limit, so `redact` shows it to clients in every mode."""


class TransactionConflict(RippleError):
    """Internal: a serializable transaction lost a conflict; the runner retries it."""


class TooManyConflicts(RippleError):
    """A mutation kept conflicting beyond the retry budget."""


class ConnectionLost(RippleError):
    """Internal: the database connection failed before the transaction's COMMIT was sent (or a
    COMMIT whose answer was lost turned out not to have committed): nothing of it committed,
    and the runner runs it again on a fresh connection."""


class FunctionFailure(Exception):
    """A call failed. `message` is what clients may see (already redacted outside dev mode);
    `data` is ConvexError data when `has_data`."""

    def __init__(self, message: str, log_lines: list[str], data: Any = None, has_data: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.log_lines = log_lines
        self.data = data
        self.has_data = has_data


class DatabaseUnavailable(FunctionFailure):
    """The database stayed unreachable for the retry budget (RIPPLE_DATABASE_RETRY_SECONDS).
    `committed` False: nothing of the call committed, sending it again is safe (code
    DatabaseUnavailable). None: a mutation's COMMIT was in flight when the connection was lost
    and whether it committed could not be established (code MutationOutcomeUnknown). The HTTP
    API answers both with 503."""

    def __init__(self, message: str, committed: bool | None) -> None:
        super().__init__(message, [])
        self.committed = committed
        self.code = "DatabaseUnavailable" if committed is False else "MutationOutcomeUnknown"


# -- what a client sees of an internal error -------------------------------------------------------

def redact(exc: BaseException, what: str, *, dev: bool, app_dir: Path | None = None,
           mask: Callable[[str], str] | None = None, request_id: str | None = None) -> str:
    """Log `exc` (with its traceback and a fresh request id) as the failure of `what`, and return
    the message a client may see: in dev mode the error and the frames of the app's own files
    under `app_dir` (never Ripple's, the standard library's or installed packages'); otherwise
    only the request id, to find the log entry by (and a FunctionTimedOut's message, which says
    nothing but the function and its limit). `mask` hides secrets in both (a function's failure
    may quote an environment variable's value: core/env.py, EnvValues.mask). `request_id`: the id
    to use (the log stream's entry of a failed function names the same one), else a fresh one."""
    request_id = request_id or secrets.token_hex(8)
    if mask is None:
        log.error("%s failed [request %s]", what, request_id, exc_info=exc)
    else:
        log.error("%s failed [request %s]\n%s", what, request_id, mask("".join(traceback.format_exception(exc)).rstrip()))
    if not dev:
        shown_as = str(exc) if isinstance(exc, FunctionTimedOut) else "Server Error"
        return f"[Request ID: {request_id}] {shown_as}"
    detail = "".join(_exception_lines(exc)).strip()
    frames = [] if app_dir is None else user_frames(exc, app_dir)
    where = "".join(traceback.format_list(frames[-5:]))
    message = f"[Request ID: {request_id}] Uncaught {detail}\n{where}".rstrip()
    return message if mask is None else mask(message)


def _exception_lines(exc: BaseException, indent: str = "") -> list[str]:
    """`exc` in a line or so; an exception group (asyncio.TaskGroup, anyio: httpx) with the
    exceptions it holds, indented, since they say what went wrong."""
    lines = [indent + line for line in traceback.format_exception_only(exc)]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            lines += _exception_lines(inner, indent + "  ")
    return lines


def user_frames(exc: BaseException, app_dir: Path) -> list[traceback.FrameSummary]:
    """The traceback frames of `exc` that run the app's own code (see is_app_file)."""
    root = app_dir.resolve()
    return [f for f in traceback.extract_tb(exc.__traceback__) if is_app_file(f.filename, root)]


def is_app_file(filename: str, app_dir: Path) -> bool:
    """A file of the app: under `app_dir` (a path prefix match: /srv/app2 is not in /srv/app),
    and not library code kept there: not the running interpreter's environment or Ripple itself,
    and not under a hidden folder (`.venv/`) or a site-packages folder. Code without a file
    (`<frozen importlib._bootstrap>`, `<string>`) is no file of the app, whatever the current
    directory."""
    if filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    if not path.is_relative_to(app_dir) or any(path.is_relative_to(lib) for lib in _library_roots()):
        return False
    folders = path.relative_to(app_dir).parts[:-1]
    return not any(p.startswith(".") or p in ("site-packages", "dist-packages", "__pycache__") for p in folders)


@cache
def _library_roots() -> tuple[Path, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, site.getusersitepackages(), *site.getsitepackages()}
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return (*(Path(r).resolve() for r in roots), Path(__file__).resolve().parent)  # and Ripple itself


def contained(exc: BaseException, where: str) -> BaseException:
    """What a BaseException raised by app code becomes: an ordinary error of the function, so
    that `SystemExit`, `KeyboardInterrupt`, `GeneratorExit` or a `CancelledError` the code raised
    itself can neither end the process nor stop the loop that ran it. A CancelledError that is a
    real request to cancel the running task (shutdown, a client gone) is returned as it is, to be
    re-raised."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return exc
    return FunctionRaisedBaseException(f"{where} raised {type(exc).__name__}: {exc}".rstrip(": "))
