"""The Convex sync protocol, server side, as a sans-I/O state machine.

`SyncSession` is fed client messages (`receive`) and tells the transport what work to start
(`Request`s); it is asked for the messages to send (`transition`, `mutation_response`, ...).
It never touches sockets, the database or the clock, so it is unit-tested message in / message
out. The websocket route (server/api/sync_ws.py) only pumps bytes and runs the requests.

Versions: per connection the client starts at {querySet: 0, identity: 0, ts: 0}; every
Transition's startVersion is exactly the previous endVersion (the client throws otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.sync.chunks import transition_chunks
from server.wire import FunctionResult, QueryResult, decode_ts, encode_ts, loads


class ProtocolError(Exception):
    """The client broke the protocol: answer with FatalError and close."""


class LimitExceeded(ProtocolError):
    """The client went over a per-connection limit (`limit` names which): FatalError and close."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Version:
    query_set: int = 0
    identity: int = 0
    ts: int = 0

    def encode(self) -> dict[str, Any]:
        return {"querySet": self.query_set, "identity": self.identity, "ts": encode_ts(self.ts)}


def _decode_ts(raw: Any, what: str) -> int:
    try:
        return decode_ts(raw)
    except ValueError as exc:
        raise ProtocolError(f"{what}: {exc}") from exc


@dataclass(slots=True)
class ClientQuery:
    query_id: int
    udf_path: str
    args: Any  # the argument object, convex_encoded_json
    journal: str | None


# -- what the transport must do -----------------------------------------------------------------


@dataclass(frozen=True)
class QuerySetChanged:
    """Reconcile subscriptions with `session.queries`."""


@dataclass(frozen=True)
class RunMutation:
    request_id: int
    udf_path: str
    args: Any
    size: int = field(default=0, compare=False)  # of the message it came in, in bytes


@dataclass(frozen=True)
class RunAction:
    request_id: int
    udf_path: str
    args: Any
    size: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Authenticate:
    token_type: str  # "User" | "Admin" | "None"
    value: str | None
    # Admin only: the user the admin acts as (the dashboard's "act as a user"), as Convex's
    # UserIdentityAttributes in camelCase (tokenIdentifier, or issuer and subject, ...).
    acting_as: dict[str, Any] | None = None


Request = QuerySetChanged | RunMutation | RunAction | Authenticate


def _int(message: dict[str, Any], key: str) -> int:
    value = message.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**53:
        raise ProtocolError(f"{message.get('type')}.{key} must be a non-negative integer (at most 2**53)")
    return value


def _args(message: dict[str, Any]) -> Any:
    args = message.get("args")
    if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict)):
        raise ProtocolError(f"{message.get('type')}.args must be a one-element array holding an object")
    return args[0]


def _path(message: dict[str, Any]) -> str:
    path = message.get("udfPath")
    if not isinstance(path, str) or not path:
        raise ProtocolError(f"{message.get('type')}.udfPath must be a non-empty string")
    return path


class SyncSession:
    """The protocol state of one websocket connection."""

    def __init__(self, max_queries: int | None = None, chunk_bytes: int | None = None) -> None:
        self.max_queries = max_queries  # the most queries the query set may hold (None: any)
        self.chunk_bytes = chunk_bytes  # larger Transitions go out in parts (None: never; sync/chunks.py)
        self.session_id: str | None = None
        self.connection_count = 0
        self.max_observed_ts = 0
        self.query_set_version = 0
        self.identity_version = 0
        self.queries: dict[int, ClientQuery] = {}
        self.sent = Version()
        self._sent_digests: dict[int, bytes] = {}
        self.awaiting_ts = 0  # the ts of the latest successful mutation
        # Clients resolve a mutation on the first Transition *after* its MutationResponse whose
        # ts covers it, so after every successful MutationResponse one more Transition is owed,
        # even when an earlier one already reached that ts (the tick can beat the response).
        self.owes_transition = False
        # While a mutation of this connection may be committing: the newest ts a Transition may
        # have until its MutationResponse is made (None: no such mutation).
        self._hold_above: int | None = None

    @property
    def connected(self) -> bool:
        return self.session_id is not None

    # -- client -> server ---------------------------------------------------------------------

    def receive(self, text: str | bytes) -> list[Request]:
        try:
            message = loads(text)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"message is not valid JSON: {exc}") from exc
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError("message must be a JSON object with a string `type`")
        kind = message["type"]
        if kind == "Connect":
            return self._connect(message)
        if not self.connected:
            raise ProtocolError(f"{kind} received before Connect")
        if kind == "ModifyQuerySet":
            return self._modify_query_set(message)
        if kind == "Mutation":
            return [RunMutation(_int(message, "requestId"), _path(message), _args(message), len(text))]
        if kind == "Action":
            return [RunAction(_int(message, "requestId"), _path(message), _args(message), len(text))]
        if kind == "Authenticate":
            return self._authenticate(message)
        if kind == "Event":
            return []
        raise ProtocolError(f"unknown message type {kind!r}")

    def _connect(self, message: dict[str, Any]) -> list[Request]:
        if self.connected:
            raise ProtocolError("Connect sent twice on one connection")
        session_id = message.get("sessionId")
        if not isinstance(session_id, str) or not 0 < len(session_id) <= 128:
            raise ProtocolError("Connect.sessionId must be a non-empty string")
        self.connection_count = _int(message, "connectionCount") if "connectionCount" in message else 0
        observed = message.get("maxObservedTimestamp")
        if observed is not None:
            self.max_observed_ts = _decode_ts(observed, "Connect.maxObservedTimestamp")
        self.session_id = session_id
        return []

    def _modify_query_set(self, message: dict[str, Any]) -> list[Request]:
        base, new = _int(message, "baseVersion"), _int(message, "newVersion")
        if base != self.query_set_version:
            raise ProtocolError(f"ModifyQuerySet baseVersion {base} does not match the query set version {self.query_set_version}")
        if new != base + 1:
            raise ProtocolError(f"ModifyQuerySet newVersion must be {base + 1}, not {new}")
        modifications = message.get("modifications")
        if not isinstance(modifications, list):
            raise ProtocolError("ModifyQuerySet.modifications must be an array")
        queries = dict(self.queries)
        for mod in modifications:
            if not isinstance(mod, dict):
                raise ProtocolError("each query set modification must be an object")
            query_id = _int(mod, "queryId")
            if mod.get("type") == "Add":
                if query_id in queries:
                    raise ProtocolError(f"query {query_id} added twice")
                journal = mod.get("journal")
                if journal is not None and not isinstance(journal, str):
                    raise ProtocolError("Add.journal must be a string or null")
                if mod.get("componentPath"):
                    raise ProtocolError("components are not supported (Add.componentPath)")
                queries[query_id] = ClientQuery(query_id, _path(mod), _args(mod), journal)
            elif mod.get("type") == "Remove":
                if query_id not in queries:
                    raise ProtocolError(f"query {query_id} removed but not in the query set")
                del queries[query_id]
            else:
                raise ProtocolError(f"unknown query set modification {mod.get('type')!r}")
        if self.max_queries is not None and len(queries) > self.max_queries:
            raise LimitExceeded("subscriptions", f"ModifyQuerySet would make the query set {len(queries)} queries; "
                                                 f"a connection may hold at most {self.max_queries}")
        self.queries = queries
        self.query_set_version = new
        return [QuerySetChanged()]

    def _authenticate(self, message: dict[str, Any]) -> list[Request]:
        base = _int(message, "baseVersion")
        if base != self.identity_version:
            raise ProtocolError(f"Authenticate baseVersion {base} does not match the identity version {self.identity_version}")
        token_type = message.get("tokenType")
        if token_type not in ("User", "Admin", "None"):
            raise ProtocolError("Authenticate.tokenType must be User, Admin or None")
        value = message.get("value")
        if token_type != "None" and not isinstance(value, str):
            raise ProtocolError("Authenticate.value must be the token string")
        acting_as = message.get("impersonating", message.get("actingAs")) if token_type == "Admin" else None
        if acting_as is not None and not isinstance(acting_as, dict):
            raise ProtocolError("Authenticate.impersonating must be an object of user identity attributes")
        return [Authenticate(token_type, value if token_type != "None" else None, acting_as)]

    # -- server -> client ---------------------------------------------------------------------

    def identity_changed(self) -> None:
        """The transport accepted an Authenticate: the next Transition confirms it."""
        self.identity_version += 1

    def auth_error(self, error: str, *, update_attempted: bool = True) -> dict[str, Any]:
        """Convex's AuthError, at the identity version the client had confirmed: for a refused
        Authenticate (`update_attempted`), or for an identity whose token expired (not): the
        npm client then fetches a fresh token and reconnects with it. The transport closes
        the connection after it, as Convex does."""
        return {"type": "AuthError", "error": error, "baseVersion": self.identity_version,
                "authUpdateAttempted": update_attempted}

    @staticmethod
    def fatal_error(error: str) -> dict[str, Any]:
        return {"type": "FatalError", "error": error}

    @staticmethod
    def ping() -> dict[str, Any]:
        return {"type": "Ping"}

    def committing(self, ts: int) -> None:
        """A mutation of this connection is about to commit; no commit it could see is newer
        than `ts`. Until its MutationResponse is made, Transitions past `ts` are held back (the
        next one after the response covers them): they may carry its writes, and clients drop
        a mutation's optimistic update only on a Transition covering it that comes *after* its
        response, so the write would show twice. Transitions up to `ts` still go out."""
        self._hold_above = ts

    def holds(self, ts: int) -> bool:
        """Is a Transition to `ts` held back until a MutationResponse (`committing`)?"""
        return self._hold_above is not None and ts > self._hold_above

    def mutation_response(self, request_id: int, result: FunctionResult) -> dict[str, Any]:
        """The response, which ends any hold (`committing`); the caller must send it before
        any Transition it asks for afterwards."""
        self._hold_above = None
        message: dict[str, Any] = {"type": "MutationResponse", "requestId": request_id, "success": result.success,
                                   "result": result.payload, "logLines": list(result.log_lines)}
        if result.success:
            assert result.ts is not None
            message["ts"] = encode_ts(result.ts)
            self.awaiting_ts = max(self.awaiting_ts, result.ts)
            self.owes_transition = True
        elif result.has_error_data:
            message["errorData"] = result.error_data
            # The Rust-based clients (PyPI `convex`) settle a failed mutation that carries error
            # data on the next Transition, as a successful one, and not at once as one with only
            # a message: owe them one (at the current ts, empty if nothing changed).
            self.owes_transition = True
        return message

    @staticmethod
    def action_response(request_id: int, result: FunctionResult) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "ActionResponse", "requestId": request_id, "success": result.success,
                                   "result": result.payload, "logLines": list(result.log_lines)}
        if not result.success and result.has_error_data:
            message["errorData"] = result.error_data
        return message

    def transition(self, ts: int, result_of: Callable[[int], QueryResult | None]) -> dict[str, Any] | None:
        """The next Transition to ts, or None when there is nothing to tell the client yet.

        `result_of(query_id)` gives each current query's result valid at `ts`, or None when it
        is not computed yet (then no Transition: all queries move together)."""
        if not self.connected or ts < self.max_observed_ts or ts < self.sent.ts or self.holds(ts):
            return None
        results: dict[int, QueryResult] = {}
        for query_id in self.queries:
            result = result_of(query_id)
            if result is None:
                return None
            results[query_id] = result
        target = Version(self.query_set_version, self.identity_version, ts)
        modifications: list[dict[str, Any]] = []
        for query_id, result in results.items():
            if self._sent_digests.get(query_id) == result.digest:
                continue
            if result.ok:
                modifications.append({"type": "QueryUpdated", "queryId": query_id, "value": result.value,
                                      "logLines": list(result.log_lines), "journal": result.journal})
            else:
                failed: dict[str, Any] = {"type": "QueryFailed", "queryId": query_id, "errorMessage": result.error_message,
                                          "logLines": list(result.log_lines), "journal": result.journal}
                if result.has_error_data:
                    failed["errorData"] = result.error_data
                modifications.append(failed)
        for query_id in self._sent_digests.keys() - results.keys():
            modifications.append({"type": "QueryRemoved", "queryId": query_id})
        versions_moved = (target.query_set, target.identity) != (self.sent.query_set, self.sent.identity)
        owes_mutation = self.owes_transition and ts >= self.awaiting_ts
        if not modifications and not versions_moved and not owes_mutation:
            return None
        if ts >= self.awaiting_ts:
            self.owes_transition = False
        message = {"type": "Transition", "startVersion": self.sent.encode(), "endVersion": target.encode(),
                   "modifications": modifications}
        self.sent = target
        self._sent_digests = {query_id: result.digest for query_id, result in results.items()}
        return message

    def chunks(self, encoded: bytes) -> Iterator[bytes] | None:
        """The TransitionChunk messages to send instead of the serialized Transition `encoded`,
        or None when it goes as one message. All of them go before any other message."""
        if self.chunk_bytes is None or len(encoded) <= self.chunk_bytes:
            return None
        return transition_chunks(encoded, self.chunk_bytes)

    def encoded_transition(
        self, ts: int, result_of: Callable[[int], QueryResult | None], cache: dict[Any, Any]
    ) -> bytes | None:
        """`transition()` serialized. Clients in the same state at the same ts (the common case
        when one commit fans out to many clients of one query) share one encoding, and the
        (immutable) state it leads to, through `cache`, which the caller keeps for one publish."""
        sent = self.sent
        hold = self._hold_above
        if not self.connected or ts < self.max_observed_ts or ts < sent.ts or (hold is not None and ts > hold):
            return None  # (held: checked before the cache, which other sessions share)
        digests = self._sent_digests
        state = []
        for query_id in self.queries:
            result = result_of(query_id)
            if result is None:
                return None
            state.append((query_id, result.digest, digests.get(query_id)))
        removed = digests.keys() - self.queries.keys()
        key = (
            sent.query_set, sent.identity, sent.ts, self.query_set_version, self.identity_version, ts,
            self.owes_transition and ts >= self.awaiting_ts, tuple(state), frozenset(removed) if removed else None,
        )
        hit = cache.get(key)
        if hit is not None:
            encoded, target, target_digests = hit
            if encoded is not None:  # the same state change transition() makes
                if ts >= self.awaiting_ts:
                    self.owes_transition = False
                self.sent = target
                self._sent_digests = target_digests  # never mutated, only replaced: safe to share
            return encoded  # type: ignore[no-any-return]
        message = self.transition(ts, result_of)
        # Sorted: QueryFailed errorData is an object in Convex's order (results are Fragments).
        encoded = None if message is None else orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
        cache[key] = (encoded, self.sent, self._sent_digests)
        return encoded
