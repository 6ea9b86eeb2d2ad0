"""The sync protocol state machines, message in / message out (no sockets, no database)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_sdk.protocol import ClientProtocol, QueriesUpdated, RequestFinished
from server.sync.chunks import accepts_chunks, transition_chunks
from server.sync.protocol import (
    Authenticate,
    LimitExceeded,
    ProtocolError,
    QuerySetChanged,
    RunAction,
    RunMutation,
    SyncSession,
)
from server.wire import FunctionResult, QueryResult, decode_ts, encode_ts


def send(session: SyncSession, message: dict[str, Any]) -> list[Any]:
    return session.receive(orjson.dumps(message))


def connected() -> SyncSession:
    s = SyncSession()
    assert send(s, {"type": "Connect", "sessionId": "s1", "connectionCount": 0, "lastCloseReason": "InitialConnect", "clientTs": 1}) == []
    return s


def ok(value: Any, digest: bytes = b"") -> QueryResult:
    return QueryResult(True, value, (), None, digest=digest or orjson.dumps(value))


def test_ts_encoding_round_trips() -> None:
    for ts in (0, 1, 2**63, 1795871929506422900):
        assert decode_ts(encode_ts(ts)) == ts


def test_query_set_and_transitions_chain_versions() -> None:
    s = connected()
    reqs = send(s, {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
        {"type": "Add", "queryId": 0, "udfPath": "a:b", "args": [{"x": 1}]},
        {"type": "Add", "queryId": 1, "udfPath": "a:c", "args": [{}]},
    ]})
    assert reqs == [QuerySetChanged()]
    results: dict[int, QueryResult] = {0: ok(1)}
    assert s.transition(10, results.get) is None  # query 1 not computed yet: nothing partial
    results[1] = ok("x")
    t1 = s.transition(10, results.get)
    assert t1 is not None
    assert t1["startVersion"] == {"querySet": 0, "identity": 0, "ts": encode_ts(0)}
    assert t1["endVersion"] == {"querySet": 1, "identity": 0, "ts": encode_ts(10)}
    assert {m["queryId"]: m["value"] for m in t1["modifications"]} == {0: 1, 1: "x"}
    # Same results at a later ts: nothing to send.
    assert s.transition(20, results.get) is None
    results[0] = ok(2)
    t2 = s.transition(30, results.get)
    assert t2 is not None and t2["startVersion"] == t1["endVersion"]
    assert [m["queryId"] for m in t2["modifications"]] == [0]
    # Time never goes backwards.
    results[0] = ok(3)
    assert s.transition(25, results.get) is None
    send(s, {"type": "ModifyQuerySet", "baseVersion": 1, "newVersion": 2, "modifications": [{"type": "Remove", "queryId": 1}]})
    t3 = s.transition(40, results.get)
    assert t3 is not None
    mods = {m["type"] for m in t3["modifications"]}
    assert mods == {"QueryUpdated", "QueryRemoved"} and t3["endVersion"]["querySet"] == 2


def test_mutation_response_then_transition_covering_its_ts() -> None:
    s = connected()
    assert send(s, {"type": "Mutation", "requestId": 0, "udfPath": "m:inc", "args": [{}]}) == [RunMutation(0, "m:inc", {})]
    response = s.mutation_response(0, FunctionResult(True, 5, ("[LOG] hi",), ts=100))
    assert response["ts"] == encode_ts(100) and response["result"] == 5 and response["success"]
    assert s.transition(99, {}.get) is None  # not there yet
    t = s.transition(100, {}.get)
    assert t is not None and t["modifications"] == [] and t["endVersion"]["ts"] == encode_ts(100)
    assert s.transition(100, {}.get) is None  # owed only once
    # The tick can reach a mutation's ts before its response goes out: one more (empty)
    # Transition must follow the response, or the client never resolves the mutation.
    send(s, {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
        {"type": "Add", "queryId": 0, "udfPath": "m:get", "args": [{}]}]})
    results = {0: ok(6)}
    early = s.transition(120, results.get)  # already carries the mutation's effect
    assert early is not None and early["endVersion"]["ts"] == encode_ts(120)
    s.mutation_response(2, FunctionResult(True, 6, ts=110))
    late = s.transition(120, results.get)
    assert late is not None and late["startVersion"] == late["endVersion"] and late["modifications"] == []
    failed = s.mutation_response(1, FunctionResult(False, "boom", error_data={"c": 1}, has_error_data=True))
    assert failed["errorData"] == {"c": 1} and "ts" not in failed
    # The Rust-based clients settle a failure with error data on the next Transition: one is owed.
    after_failure = s.transition(120, results.get)
    assert after_failure is not None and after_failure["modifications"] == []
    s.mutation_response(3, FunctionResult(False, "plain"))  # settled at once by every client
    assert s.transition(120, results.get) is None


def test_failed_query_carries_error_data() -> None:
    s = connected()
    send(s, {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
        {"type": "Add", "queryId": 7, "udfPath": "a:b", "args": [{}]}]})
    failed = QueryResult(False, None, ("[ERROR] x",), None, "Uncaught ConvexError", {"code": 1}, True, b"d")
    t = s.transition(5, {7: failed}.get)
    assert t is not None
    (mod,) = t["modifications"]
    assert mod["type"] == "QueryFailed" and mod["errorData"] == {"code": 1} and mod["logLines"] == ["[ERROR] x"]


def test_actions_events_and_authenticate() -> None:
    s = connected()
    assert send(s, {"type": "Action", "requestId": 3, "udfPath": "a:x", "args": [{"k": 1}]}) == [RunAction(3, "a:x", {"k": 1})]
    assert send(s, {"type": "Event", "eventType": "x", "event": {}}) == []
    assert send(s, {"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": "jwt"}) == [Authenticate("User", "jwt")]
    s.identity_changed()
    t = s.transition(1, {}.get)
    assert t is not None and t["endVersion"]["identity"] == 1  # confirms the new identity
    assert s.auth_error("bad")["baseVersion"] == 1


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([b"not json"], "not valid JSON"),
        ([{"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": []}], "before Connect"),
        (["connect", {"type": "ModifyQuerySet", "baseVersion": 3, "newVersion": 4, "modifications": []}], "baseVersion 3"),
        (["connect", {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 5, "modifications": []}], "newVersion must be 1"),
        (["connect", {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [{"type": "Remove", "queryId": 1}]}], "not in the query set"),
        (["connect", {"type": "Mutation", "requestId": 0, "udfPath": "a:b", "args": {"x": 1}}], "one-element array"),
        (["connect", {"type": "Mutation", "requestId": -1, "udfPath": "a:b", "args": [{}]}], "non-negative integer"),
        (["connect", b'{"type": "Mutation", "requestId": 1208925819614629174706176, "udfPath": "a:b", "args": [{}]}'],
         "non-negative integer"),
        (["connect", {"type": "Authenticate", "baseVersion": 4, "tokenType": "None"}], "identity version"),
        (["connect", {"type": "Bogus"}], "unknown message type"),
        (["connect", "connect"], "Connect sent twice"),
        ([{"type": "Connect"}], "sessionId"),
    ],
)
def test_protocol_errors(messages: list[Any], fragment: str) -> None:
    s = SyncSession()
    with pytest.raises(ProtocolError, match=fragment):
        for m in messages:
            if m == "connect":
                m = {"type": "Connect", "sessionId": "s", "connectionCount": 0}
            s.receive(m if isinstance(m, bytes) else orjson.dumps(m))


def test_the_query_set_limit_refuses_the_modification_that_goes_over_it() -> None:
    s = SyncSession(max_queries=2)
    send(s, {"type": "Connect", "sessionId": "s1"})

    def add(query_id: int) -> dict[str, Any]:
        return {"type": "Add", "queryId": query_id, "udfPath": "a:b", "args": [{}]}

    send(s, {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [add(0), add(1)]})
    send(s, {"type": "ModifyQuerySet", "baseVersion": 1, "newVersion": 2,  # a swap stays within it
             "modifications": [{"type": "Remove", "queryId": 0}, add(2)]})
    with pytest.raises(LimitExceeded, match="query set 3 queries; a connection may hold at most 2") as refused:
        send(s, {"type": "ModifyQuerySet", "baseVersion": 2, "newVersion": 3, "modifications": [add(3)]})
    assert refused.value.limit == "subscriptions"
    assert set(s.queries) == {1, 2} and s.query_set_version == 2  # nothing of the refused change applied


def test_requests_carry_the_size_of_their_message() -> None:
    s = connected()
    text = orjson.dumps({"type": "Mutation", "requestId": 0, "udfPath": "m:inc", "args": [{"pad": "x" * 1000}]})
    (request,) = s.receive(text)
    assert isinstance(request, RunMutation) and request.size == len(text)
    text = text.replace(b"Mutation", b"Action")
    (request,) = s.receive(text.decode())
    assert isinstance(request, RunAction) and request.size == len(text)


def test_client_and_server_sessions_agree() -> None:
    """Drive our client state machine against the server one, in memory."""
    client, server = ClientProtocol(), SyncSession()
    for message in client.on_connect():
        server.receive(orjson.dumps(message))
    query_id, add, new = client.subscribe("c:get", {"n": "a"})
    assert new and add is not None
    assert server.receive(orjson.dumps(add)) == [QuerySetChanged()]
    assert client.subscribe("c:get", {"n": "a"})[0] == query_id  # identical queries share one id
    results = {query_id: ok(1)}
    events = client.receive(orjson.dumps(server.transition(5, results.get)))
    assert events == [QueriesUpdated(frozenset({query_id}))] and client.results[query_id].value == 1
    request_id, mutation = client.request("Mutation", "c:inc", {"n": "a"})
    assert mutation is not None
    (run,) = server.receive(orjson.dumps(mutation))
    assert isinstance(run, RunMutation)
    assert client.receive(orjson.dumps(server.mutation_response(request_id, FunctionResult(True, 2, ts=9)))) == []
    results[query_id] = ok(2)
    events = client.receive(orjson.dumps(server.transition(9, results.get)))
    assert RequestFinished(request_id, {"type": "MutationResponse", "requestId": request_id, "success": True,
                                        "result": 2, "logLines": [], "ts": encode_ts(9)}) in events
    # Reconnect: the whole query set is re-added 0 -> 1, with journals.
    client.on_disconnect()
    resend = client.on_connect("ServerClosed")
    assert [m["type"] for m in resend] == ["Connect", "ModifyQuerySet"]
    assert resend[1]["baseVersion"] == 0 and resend[1]["modifications"][0]["queryId"] == query_id
    assert resend[0]["maxObservedTimestamp"] == encode_ts(9)


def test_client_resends_unconfirmed_mutations_and_fails_actions() -> None:
    client = ClientProtocol()
    client.on_connect()
    m_id, _ = client.request("Mutation", "c:inc", {})
    a_id, _ = client.request("Action", "c:act", {})
    events = client.on_disconnect()
    assert [e.request_id for e in events if isinstance(e, RequestFinished)] == [a_id]
    resend = client.on_connect("Lost")
    assert [m.get("requestId") for m in resend if m["type"] == "Mutation"] == [m_id]


def test_clients_in_the_same_state_share_one_encoding() -> None:
    a, b = connected(), connected()
    for s in (a, b):
        send(s, {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 3, "udfPath": "a:b", "args": [{}]}]})
    results = {3: ok(1)}
    cache: dict[Any, bytes | None] = {}
    first = a.encoded_transition(7, results.get, cache)
    second = b.encoded_transition(7, results.get, cache)
    assert first is not None and first is second and len(cache) == 1
    assert a.sent == b.sent and a.sent.ts == 7
    assert a.encoded_transition(7, results.get, cache) is None  # nothing new for a
    results[3] = ok(2)
    third = b.encoded_transition(9, results.get, cache)
    assert third is not None and orjson.loads(third)["modifications"][0]["value"] == 2
    assert orjson.loads(third) == orjson.loads(orjson.dumps(a.transition(9, results.get)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    st.integers(0, 5),  # which session acts
    st.sampled_from(["add", "remove", "mutation", "publish"]),
    st.integers(0, 2),  # query id / result choice
), max_size=40))
def test_shared_encodings_equal_what_each_session_would_send_alone(steps: list[tuple[int, str, int]]) -> None:
    """Sessions publishing through one cache end in exactly the states, and send exactly the
    messages, of twin sessions that build every Transition on their own."""
    shared = [connected() for _ in range(6)]
    alone = [connected() for _ in range(6)]
    results: dict[int, QueryResult] = {}
    ts, request_id = 10, 0
    for who, op, n in steps:
        if op == "publish":
            ts += 1
            for q in range(3):
                results[q] = ok(n + q)
            cache: dict[Any, Any] = {}
            for s, twin in zip(shared, alone, strict=True):
                encoded = s.encoded_transition(ts, results.get, cache)
                expected = twin.transition(ts, results.get)
                assert (None if encoded is None else orjson.loads(encoded)) == orjson.loads(orjson.dumps(expected))
                assert (s.sent, s.owes_transition) == (twin.sent, twin.owes_transition)
            continue
        for s in (shared[who], alone[who]):
            queries = {q: {"type": "Add", "queryId": q, "udfPath": "a:b", "args": [{"q": q}]} for q in s.queries}
            if op == "add":
                queries[n] = {"type": "Add", "queryId": n, "udfPath": "a:b", "args": [{"q": n}]}
            elif op == "remove":
                queries.pop(n, None)
            if op in ("add", "remove"):
                version = s.query_set_version
                mods: list[dict[str, Any]] = [{"type": "Remove", "queryId": q} for q in s.queries if q not in queries]
                mods += [m for q, m in queries.items() if q not in s.queries]
                send(s, {"type": "ModifyQuerySet", "baseVersion": version, "newVersion": version + 1, "modifications": mods})
            else:
                s.mutation_response(request_id, FunctionResult(True, None, ts=ts))
        request_id += 1


# -- TransitionChunk ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "header", "expected"), [
    ("/api/1.49.0/sync", None, True),           # the npm client: its version in the path
    ("/api/1.28.0/sync", None, True),           # Convex's first version with chunks
    ("/api/1.28.0-alpha.1/sync", None, False),  # a pre-release of it sorts before it
    ("/api/1.27.5/sync", None, False),
    ("/api/sync", None, False),                 # no version: not known to be npm
    ("/api/latest/sync", None, False),
    ("/api/sync", "npm-1.49.0", True),          # the header wins over the path, as in Convex
    ("/api/1.49.0/sync", "python-0.8.1", False),  # the PyPI client (Rust): fails on a chunk
    ("/api/sync", "rust-0.10.4", False),
    ("/api/sync", "npm-cli-1.49.0", False),     # another client whose name starts with npm
    ("/api/sync", "npm-1.30.0-rc.2", True),
    ("/api/sync", "npm", False),
])
def test_who_gets_transition_chunks(path: str, header: str | None, expected: bool) -> None:
    assert accepts_chunks(path, header) is expected


def test_small_transitions_go_whole_and_clients_without_chunks_get_every_transition_whole() -> None:
    encoded = orjson.dumps({"type": "Transition", "modifications": ["x" * 100]})
    assert SyncSession(chunk_bytes=len(encoded)).chunks(encoded) is None
    assert SyncSession().chunks(encoded) is None
    assert SyncSession(chunk_bytes=len(encoded) - 1).chunks(encoded) is not None


@given(st.text(min_size=1, max_size=300), st.integers(4, 40))
@settings(max_examples=300, deadline=None)
def test_chunks_join_into_the_transition_as_the_npm_client_joins_them(text: str, part_bytes: int) -> None:
    """The client joins the `chunk` strings and parses the result: every part is at most
    `part_bytes` of UTF-8, cut between characters, and they join into exactly the Transition."""
    encoded = orjson.dumps({"type": "Transition", "modifications": [{"value": text}]})
    parts = [orjson.loads(part) for part in transition_chunks(encoded, part_bytes)]
    assert "".join(p["chunk"] for p in parts).encode() == encoded
    assert [p["partNumber"] for p in parts] == list(range(len(parts)))
    assert all(p["totalParts"] == len(parts) and p["transitionId"] == str(len(encoded)) for p in parts)
    assert all(p["type"] == "TransitionChunk" and set(p) == {"type", "chunk", "partNumber", "totalParts", "transitionId"}
               for p in parts)
    sizes = [len(p["chunk"].encode()) for p in parts]
    assert all(0 < size <= part_bytes for size in sizes)
    assert all(size > part_bytes - 4 for size in sizes[:-1])  # moved back by at most a character
