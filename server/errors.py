"""Ripple's exceptions. Three kinds stay apart:

- ConvexError: an application error a client may catch and read (`data` reaches it as errorData);
- RippleUsageError and its children: the caller or the app developer did something wrong
  (bad arguments, unknown function, misuse of the document API); the message is safe to show
  to the caller it concerns (inside a function it is the function's failure, see below);
- anything else: an internal failure; clients see only a redacted message with a request id
  outside dev mode.
"""

from __future__ import annotations

from typing import Any


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


class StaleTimestamp(RippleUsageError):
    """A query at an old timestamp cannot be answered: what it read changed since."""

    code = "InvalidTimestamp"


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


class TransactionConflict(RippleError):
    """Internal: a serializable transaction lost a conflict; the runner retries it."""


class TooManyConflicts(RippleError):
    """A mutation kept conflicting beyond the retry budget."""
