"""Environment variables as functions see them: Convex's rules for names and values, the
process's copy of the variables (`EnvValues`) and `ctx.env`, the read-only mapping over it.

Functions read variables synchronously, so every process keeps all of them in memory; the
runtime refreshes the copy from the `_environment_variables` table (server/core/env_store.py)
whenever it sees a commit that wrote it. A read calls `on_read` with the name (None: all of
them), which the runtime turns into a read range, so a live query re-runs when a variable it
read changes. Values are secrets: no message built here contains one, and `EnvValues.mask`
hides them in what function code makes of them (its failures and log lines).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import RippleUsageError, shown

# Convex's rules (get-convex/convex-backend crates/common/src/types/environment_variables.rs and
# knobs.rs ENV_VAR_LIMIT, ENV_VAR_TOTAL_SIZE_LIMIT).
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME_LENGTH = 256
MAX_VALUE_BYTES = 8 * 1024  # UTF-8
MAX_VARIABLES = 512
MAX_TOTAL_BYTES = 512 * 1024  # names and values of all variables together
MIN_MASKED = 8  # shorter values ("1", "true", "30") are not masked: they would mangle every message
# Convex's system environment variables: every function reads them, no one sets or removes them
# (Convex refuses with EnvVarNameForbidden), and `env list` does not show them: they are not stored.
BUILT_IN = ("CONVEX_CLOUD_URL", "CONVEX_SITE_URL")
SET_HINT = "set it with `ripple env set {name}` (or POST /api/update_environment_variables with the admin key)"


class EnvVarError(RippleUsageError):
    """A name, value or batch of changes Convex's rules refuse. The code is Convex's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MissingEnvVar(KeyError):
    """`ctx.env[name]` for a variable that is not set."""

    def __str__(self) -> str:  # KeyError would show the message quoted, as a repr
        return str(self.args[0])


def check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise EnvVarError("EnvironmentVariableNameInvalid", f"an environment variable name must be a string, not {type(name).__name__}")
    if not NAME_RE.fullmatch(name):
        raise EnvVarError("EnvironmentVariableNameInvalid", f"the environment variable name {shown(name)!r} is invalid: names "
                          "begin with a letter or '_' and hold only letters a-z and A-Z, digits and '_'")
    if len(name) > MAX_NAME_LENGTH:
        raise EnvVarError("EnvironmentVariableNameTooLong", f"the environment variable name {shown(name)!r} is {len(name)} "
                          f"characters long; the limit is {MAX_NAME_LENGTH}")
    return name


def check_settable(name: Any) -> str:
    """A name a change may set or remove: valid, and not one of the built-in variables."""
    check_name(name)
    if name in BUILT_IN:
        raise EnvVarError("EnvVarNameForbidden", f"environment variable {name} is built-in and cannot be overridden: "
                          "it is the server's own URL (docs/env.md, Built-in variables)")
    return str(name)


def built_in_values(base_url: str) -> dict[str, str]:
    """The built-in variables of a server reached at `base_url`. Convex has two hosts (.convex.cloud
    for clients, .convex.site for HTTP actions); Ripple serves both on one, so both are its URL."""
    return {name: base_url for name in BUILT_IN}


def check_value(name: str, value: Any) -> str:
    """The value of variable `name` if Convex would store it; the message never shows it."""
    if not isinstance(value, str):
        raise EnvVarError("EnvironmentVariableValueInvalid", f"the value of {name} must be a string, not {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise EnvVarError("EnvironmentVariableValueTooLarge", f"the value of {name} is {size} bytes; the limit is "
                          f"{MAX_VALUE_BYTES} bytes (8 KiB)")
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise EnvVarError("EnvironmentVariableValueInvalid", f"the value of {name} holds a NUL character or a lone "
                          "surrogate, which PostgreSQL cannot store")
    return value


@dataclass(frozen=True)
class Change:
    """Set `name` to `value`, or remove it (value None)."""

    name: str
    value: str | None


def parse_changes(body: Any) -> list[Change]:
    """`{"changes": [{"name": ..., "value": ...}, ...]}` as Convex's update_environment_variables
    takes it (value absent or null: remove). A name twice in one batch is refused."""
    if not isinstance(body, dict) or not isinstance(body.get("changes"), list):
        raise EnvVarError("BadJsonBody", 'the body must be {"changes": [{"name": ..., "value": ...}, ...]}')
    unknown = set(body) - {"changes"}
    if unknown:
        raise EnvVarError("BadJsonBody", f"unexpected field(s) in the body: {shown(', '.join(sorted(map(str, unknown))))}")
    changes: list[Change] = []
    seen: set[str] = set()
    for i, raw in enumerate(body["changes"]):
        if not isinstance(raw, dict) or set(raw) - {"name", "value"}:
            raise EnvVarError("BadJsonBody", f"changes[{i}] must be an object with `name` and, to set it, `value`")
        name = check_settable(raw.get("name"))
        if name in seen:
            raise EnvVarError("EnvVarNameNotUnique", f"{name} appears more than once in one batch of changes")
        seen.add(name)
        value = raw.get("value")
        changes.append(Change(name, None if value is None else check_value(name, value)))
    return changes


def parse_env_file(text: str, file: str) -> list[Change]:
    """The variables of a dotenv-style file (`dev.env`): one `NAME=value` a line; blank lines and
    lines starting with `#` are skipped; spaces around the name and the value are dropped, and
    one pair of matching quotes around the value (to keep spaces, or an empty value). Strict:
    anything else raises EnvVarError naming the file and the line (never the value)."""
    changes: list[Change] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{file} line {number}"
        name, equals, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not equals:
            raise EnvVarError("EnvFileInvalid", f"{where}: expected NAME=value (or a # comment)")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        try:
            check_settable(name)
            check_value(name, value)
        except EnvVarError as exc:
            raise EnvVarError(exc.code, f"{where}: {exc}") from None
        if name in seen:
            raise EnvVarError("EnvFileInvalid", f"{where}: {name} is set twice in the file")
        seen.add(name)
        changes.append(Change(name, value))
    return changes


def check_totals(values: Mapping[str, str]) -> None:
    """All variables of a deployment, after a batch of changes, within Convex's limits."""
    if len(values) > MAX_VARIABLES:
        raise EnvVarError("EnvVarLimitMet", f"{len(values)} environment variables; the limit is {MAX_VARIABLES}")
    total = sum(len(n) + len(v.encode("utf-8")) for n, v in values.items())
    if total > MAX_TOTAL_BYTES:
        raise EnvVarError("EnvVarTotalSizeLimitMet", f"the environment variables total {total} bytes (names and values); "
                          f"the limit is {MAX_TOTAL_BYTES} bytes")


class EnvValues:
    """This process's copy of every variable, as of commit `ts`. It only moves forward: a copy
    read at an older ts than the one held is ignored (a live-query tick's snapshot may be older
    than a refresh right after this process changed the variables)."""

    def __init__(self, built_in: dict[str, str] | None = None) -> None:
        self.values: dict[str, str] = {}  # what is stored; never the built-in variables
        self.built_in = built_in or {}  # constant for the process: reading one reads nothing stored
        self.ts = -1
        self._masked: tuple[re.Pattern[str], dict[str, str]] | None = None  # made when first needed

    def replace(self, values: dict[str, str], ts: int) -> bool:
        """Take `values`, read at `ts`, unless what is held is newer; whether it was taken."""
        if ts < self.ts:
            return False
        self.values, self.ts, self._masked = values, ts, None
        return True

    def mask(self, text: str) -> str:
        """`text` with every value of MIN_MASKED characters or more replaced by `[env NAME]`:
        a function's failure and log lines may quote a value (an HTTP library's error naming a
        URL with a token in it); neither the server log nor a client should see it."""
        if self._masked is None:
            names: dict[str, str] = {}
            for name, value in sorted(self.values.items()):
                if len(value) >= MIN_MASKED:
                    names.setdefault(value, name)  # one value under two names: the first name
            longest_first = sorted(names, key=len, reverse=True)
            self._masked = re.compile("|".join(map(re.escape, longest_first)) or "(?!)"), names
        pattern, names = self._masked
        return pattern.sub(lambda m: f"[env {names[m.group()]}]", text) if names else text


class Env(Mapping[str, str]):
    """`ctx.env`: `ctx.env["NAME"]`, `ctx.env.get("NAME", default)`, `"NAME" in ctx.env`, and
    iteration over the names. Read-only: only admins change variables."""

    def __init__(self, values: EnvValues, on_read: Callable[[str | None], None] | None = None) -> None:
        self._values = values
        self._on_read = on_read

    def _read(self, name: str | None) -> None:
        if self._on_read is not None:
            self._on_read(name)

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise TypeError(f"environment variable names are strings, not {type(name).__name__}")
        built_in = self._values.built_in.get(name)
        if built_in is not None:
            return built_in
        self._read(name)
        try:
            return self._values.values[name]
        except KeyError:
            raise MissingEnvVar(f"environment variable {shown(name)!r} is not set; {SET_HINT.format(name=shown(name))}") from None

    def __iter__(self) -> Iterator[str]:
        self._read(None)
        return iter(sorted(self._names()))

    def __len__(self) -> int:
        self._read(None)
        return len(self._names())

    def __repr__(self) -> str:  # never the values: a repr ends up in logs and error messages
        return f"<ctx.env: {len(self._names())} variables>"

    def _names(self) -> set[str]:
        """The stored variables' names and the built-in ones."""
        return {*self._values.values, *self._values.built_in}
