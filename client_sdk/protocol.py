"""Client side of the Convex sync protocol as a sans-I/O state machine.

`ClientProtocol` holds what must survive a reconnect (subscribed queries with their journals,
the auth token, mutations not yet confirmed) and what is reset per socket (the remote query
set and its version). The transport (client_sdk/client.py) feeds it server messages and sends
what it returns. On every new socket, `on_connect()` says what to resend: Connect,
Authenticate, the whole query set as 0 -> 1, and every unconfirmed mutation (the server
deduplicates them by session id and request id). Actions in flight fail instead: they are never
resent.
"""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from server.core.values import to_convex_json


def decode_ts(raw: str) -> int:
    return int(struct.unpack("<Q", base64.b64decode(raw))[0])


def encode_ts(ts: int) -> str:
    return base64.b64encode(struct.pack("<Q", ts)).decode()


@dataclass
class LocalQuery:
    query_id: int
    path: str
    args: Any  # convex_encoded_json of the argument object
    journal: str | None = None


class RequestStatus(Enum):
    REQUESTED = "requested"  # sent, no response yet
    COMPLETED = "completed"  # response received; waiting for a Transition at its ts


@dataclass
class PendingRequest:
    request_id: int
    message: dict[str, Any]
    status: RequestStatus = RequestStatus.REQUESTED
    response: dict[str, Any] | None = None
    ts: int = 0


@dataclass
class QueryResult:
    ok: bool
    value: Any = None  # convex_encoded_json
    error_message: str | None = None
    error_data: Any = None
    has_error_data: bool = False
    log_lines: list[str] = field(default_factory=list)


# Events for the transport ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueriesUpdated:
    query_ids: frozenset[int]


@dataclass(frozen=True)
class RequestFinished:
    request_id: int
    response: dict[str, Any]  # MutationResponse / ActionResponse, or a synthetic failure


@dataclass(frozen=True)
class AuthRejected:
    """AuthError: the token was refused (`update_attempted`), or the identity's token expired."""

    error: str
    update_attempted: bool = True


@dataclass(frozen=True)
class AuthConfirmed:
    """A Transition moved the identity version: the server accepted the token."""


@dataclass(frozen=True)
class ServerFatal:
    error: str


Event = QueriesUpdated | RequestFinished | AuthRejected | AuthConfirmed | ServerFatal


class ProtocolViolation(Exception):
    """The server sent something inconsistent (e.g. a Transition from the wrong version)."""


class ClientProtocol:
    def __init__(self) -> None:
        self.session_id = str(uuid.uuid4())
        self.queries: dict[int, LocalQuery] = {}
        self._by_token: dict[bytes, int] = {}
        self._next_query_id = 0
        self._next_request_id = 0
        self.query_set_version = 0
        self.identity_version = 0
        self.auth_token: str | None = None
        # An admin's credentials instead (tools such as `ripple run --watch`): the deployment's admin
        # key, and the user identity attributes to act as (None: as the admin).
        self.admin_key: str | None = None
        self.acting_as: dict[str, Any] | None = None
        self.requests: dict[int, PendingRequest] = {}
        self.remote_version = (0, 0, 0)  # (querySet, identity, ts) of the last Transition
        self.results: dict[int, QueryResult] = {}
        self.max_observed_ts = 0
        self.connection_count = 0
        self.connected = False

    # -- socket lifecycle -------------------------------------------------------------------

    def on_connect(self, last_close_reason: str = "InitialConnect") -> list[dict[str, Any]]:
        """Messages to send on a new socket, in order."""
        self.connected = True
        self.remote_version = (0, 0, 0)
        self.results = {}
        messages: list[dict[str, Any]] = [{
            "type": "Connect", "sessionId": self.session_id, "connectionCount": self.connection_count,
            "lastCloseReason": last_close_reason, "clientTs": 0,
            **({"maxObservedTimestamp": encode_ts(self.max_observed_ts)} if self.max_observed_ts else {}),
        }]
        self.connection_count += 1
        self.identity_version = 0
        authenticate = self._authenticate(0)
        if authenticate is not None:
            messages.append(authenticate)
            self.identity_version = 1
        self.query_set_version = 1
        messages.append({
            "type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
            "modifications": [self._add(q) for q in self.queries.values()],
        })
        for request in self.requests.values():
            if request.message["type"] == "Mutation":
                messages.append(request.message)
        return messages

    def on_disconnect(self) -> list[Event]:
        """Fail in-flight actions (they are never resent); keep mutations for resending."""
        self.connected = False
        events: list[Event] = []
        for request_id, request in list(self.requests.items()):
            if request.message["type"] == "Action":
                del self.requests[request_id]
                events.append(RequestFinished(request_id, {
                    "type": "ActionResponse", "requestId": request_id, "success": False,
                    "result": "Connection lost while action was in flight", "logLines": []}))
        return events

    # -- local changes ------------------------------------------------------------------------

    @staticmethod
    def _add(q: LocalQuery) -> dict[str, Any]:
        return {"type": "Add", "queryId": q.query_id, "udfPath": q.path, "args": [q.args], "journal": q.journal}

    def subscribe(self, path: str, args: dict[str, Any]) -> tuple[int, dict[str, Any] | None, bool]:
        """(query id, message to send or None, whether it is new). Identical queries share an id."""
        encoded = to_convex_json(args)
        token = orjson.dumps([path, encoded], option=orjson.OPT_SORT_KEYS)
        existing = self._by_token.get(token)
        if existing is not None:
            return existing, None, False
        query = LocalQuery(self._next_query_id, path, encoded)
        self._next_query_id += 1
        self.queries[query.query_id] = query
        self._by_token[token] = query.query_id
        return query.query_id, self._modify([self._add(query)]), True

    def unsubscribe(self, query_id: int) -> dict[str, Any] | None:
        query = self.queries.pop(query_id, None)
        if query is None:
            return None
        self._by_token = {t: q for t, q in self._by_token.items() if q != query_id}
        return self._modify([{"type": "Remove", "queryId": query_id}])

    def _modify(self, modifications: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not self.connected:
            return None  # on_connect sends the whole set
        base = self.query_set_version
        self.query_set_version += 1
        return {"type": "ModifyQuerySet", "baseVersion": base, "newVersion": base + 1, "modifications": modifications}

    def request(self, kind: str, path: str, args: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        request_id = self._next_request_id
        self._next_request_id += 1
        message = {"type": kind, "requestId": request_id, "udfPath": path, "args": [to_convex_json(args)]}
        self.requests[request_id] = PendingRequest(request_id, message)
        return request_id, message if self.connected else None

    def set_auth(self, token: str | None) -> dict[str, Any] | None:
        self.auth_token = token
        if not self.connected:
            return None
        base = self.identity_version
        self.identity_version += 1
        return self._authenticate(base) or {"type": "Authenticate", "baseVersion": base, "tokenType": "None"}

    def _authenticate(self, base: int) -> dict[str, Any] | None:
        """The Authenticate message for the credentials set (None: none are)."""
        if self.admin_key is not None:
            message = {"type": "Authenticate", "baseVersion": base, "tokenType": "Admin", "value": self.admin_key}
            if self.acting_as is not None:
                message["impersonating"] = self.acting_as
            return message
        if self.auth_token is not None:
            return {"type": "Authenticate", "baseVersion": base, "tokenType": "User", "value": self.auth_token}
        return None

    # -- server messages ----------------------------------------------------------------------

    def receive(self, text: str | bytes) -> list[Event]:
        message = orjson.loads(text)
        kind = message.get("type")
        if kind == "Transition":
            return self._transition(message)
        if kind in ("MutationResponse", "ActionResponse"):
            return self._response(message)
        if kind == "AuthError":
            return [AuthRejected(str(message.get("error")), message.get("authUpdateAttempted") is not False)]
        if kind == "FatalError":
            return [ServerFatal(str(message.get("error")))]
        return []  # Ping, unknown additions

    def _transition(self, message: dict[str, Any]) -> list[Event]:
        start, end = message["startVersion"], message["endVersion"]
        start_v = (start["querySet"], start["identity"], decode_ts(start["ts"]))
        if start_v != self.remote_version:
            raise ProtocolViolation(f"Transition starts at {start_v}, expected {self.remote_version}")
        changed: set[int] = set()
        for mod in message["modifications"]:
            query_id = mod["queryId"]
            if mod["type"] == "QueryUpdated":
                self.results[query_id] = QueryResult(True, mod.get("value"), log_lines=mod.get("logLines", []))
            elif mod["type"] == "QueryFailed":
                self.results[query_id] = QueryResult(False, error_message=mod.get("errorMessage"), error_data=mod.get("errorData"),
                                                     has_error_data="errorData" in mod, log_lines=mod.get("logLines", []))
            elif mod["type"] == "QueryRemoved":
                self.results.pop(query_id, None)
            if mod.get("journal") is not None and query_id in self.queries:
                self.queries[query_id].journal = mod["journal"]
            changed.add(query_id)
        self.remote_version = (end["querySet"], end["identity"], decode_ts(end["ts"]))
        ts = self.remote_version[2]
        self.max_observed_ts = max(self.max_observed_ts, ts)
        events: list[Event] = [QueriesUpdated(frozenset(changed))] if changed else []
        if end["identity"] > start["identity"]:
            events.append(AuthConfirmed())
        for request_id, request in list(self.requests.items()):
            if request.status is RequestStatus.COMPLETED and request.ts <= ts:
                del self.requests[request_id]
                assert request.response is not None
                events.append(RequestFinished(request_id, request.response))
        return events

    def _response(self, message: dict[str, Any]) -> list[Event]:
        request = self.requests.get(message["requestId"])
        if request is None or request.status is RequestStatus.COMPLETED:
            return []
        if message["type"] == "ActionResponse" or not message["success"]:
            del self.requests[request.request_id]
            return [RequestFinished(request.request_id, message)]
        # A successful mutation resolves once the query results reflect it.
        request.status = RequestStatus.COMPLETED
        request.response = message
        request.ts = decode_ts(message["ts"])
        self.max_observed_ts = max(self.max_observed_ts, request.ts)
        if request.ts <= self.remote_version[2]:
            del self.requests[request.request_id]
            return [RequestFinished(request.request_id, message)]
        return []
