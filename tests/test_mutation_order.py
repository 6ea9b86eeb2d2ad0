"""A mutation's MutationResponse reaches its client before any Transition that carries its
writes (endVersion.ts >= the mutation's ts), as Convex sends them: the official clients drop a
mutation's optimistic update only on a Transition at or past its ts that arrives *after* its
response, so a Transition first shows the write twice (the server's and the optimistic one).

Raw websockets against a real `ripple serve`, over hundreds of mutations, with other
connections writing the same counter meanwhile (their commits make the live queries tick while
this connection's mutations are committing); the session's hold, message in / message out; and
actions, for which nothing is held back."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import websockets

from server.sync.protocol import SyncSession
from server.wire import FunctionResult, QueryResult, decode_ts

from conftest import ServerProcess

StartServer = Callable[..., ServerProcess]

MUTATIONS = 300
BATCH = 10  # mutations sent at once (they run one at a time, in order), then waited for
WRITERS = 2


def _session() -> SyncSession:
    s = SyncSession()
    s.receive(orjson.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0}))
    s.receive(orjson.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
        {"type": "Add", "queryId": 0, "udfPath": "counters:get", "args": [{}]}]}))
    return s


def _value(n: int) -> dict[int, QueryResult]:
    return {0: QueryResult(True, n, (), None, digest=orjson.dumps(n))}


def test_transitions_past_a_committing_mutation_wait_for_its_response() -> None:
    s, other = _session(), _session()
    assert s.transition(10, _value(0).get) is not None and other.transition(10, _value(0).get) is not None
    s.committing(10)  # nothing newer than ts 10 was published when its COMMIT went out
    assert not s.holds(10) and s.holds(11)
    assert s.transition(12, _value(1).get) is None  # ts 12 may hold the mutation's write: held
    cache: dict[object, object] = {}
    assert s.encoded_transition(20, _value(1).get, cache) is None
    # A session in the same state, not committing, shares the cache and still gets its Transition.
    shared = other.encoded_transition(20, _value(1).get, cache)
    assert shared is not None and orjson.loads(shared)["modifications"][0]["value"] == 1
    response = s.mutation_response(3, FunctionResult(True, 1, ts=15))
    assert response["ts"] is not None and not s.holds(20)
    after = s.transition(20, _value(1).get)  # right after the response: the held change, settling it
    assert after is not None and decode_ts(after["endVersion"]["ts"]) == 20 and after["modifications"][0]["value"] == 1
    assert not s.owes_transition


def test_transitions_up_to_the_commit_point_still_go_out_and_failures_end_the_hold() -> None:
    s = _session()
    assert s.transition(10, _value(0).get) is not None
    s.committing(30)
    early = s.transition(25, _value(5).get)  # computed before the commit: may go out
    assert early is not None and early["modifications"][0]["value"] == 5
    assert s.transition(31, _value(6).get) is None
    s.mutation_response(4, FunctionResult(False, "conflict"))  # failed: no ts, but the hold ends
    assert s.transition(31, _value(6).get) is not None


async def _connect(url: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url, max_size=None)
    await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0}))
    return ws


async def _writer(url: str, name: str, stop: asyncio.Event) -> int:
    """Increment `name` one mutation at a time until `stop`; how many it made."""
    ws = await _connect(url)
    made = 0
    try:
        while not stop.is_set():
            await ws.send(json.dumps({"type": "Mutation", "requestId": made, "udfPath": "counters:inc",
                                      "args": [{"name": name}]}))
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "MutationResponse":
                    assert message["success"], message
                    made += 1
                    break
    finally:
        await ws.close()
    return made


@pytest.mark.e2e
async def test_every_mutation_response_precedes_the_transitions_with_its_writes(basic_server: ServerProcess) -> None:
    server = basic_server
    url = server.url.replace("http://", "ws://") + "/api/sync"
    name = f"order-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    writers = [asyncio.create_task(_writer(url, name, stop)) for _ in range(WRITERS)]
    received: list[dict[str, Any]] = []  # every message of the watched connection, in order
    ws = await _connect(url)
    try:
        await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "counters:get", "args": [{"name": name}]}]}))
        request_id = 0
        while request_id < MUTATIONS:
            batch = range(request_id, min(request_id + BATCH, MUTATIONS))
            for rid in batch:
                await ws.send(json.dumps({"type": "Mutation", "requestId": rid, "udfPath": "counters:inc",
                                          "args": [{"name": name}]}))
            waiting = set(batch)
            while waiting:
                message = json.loads(await ws.recv())
                received.append(message)
                if message["type"] == "MutationResponse":
                    waiting.discard(message["requestId"])
            request_id = batch.stop
        # The last mutation is settled by a Transition at or past its ts, after its response.
        last_ts = decode_ts(next(m for m in reversed(received) if m["type"] == "MutationResponse")["ts"])
        while not (received[-1]["type"] == "Transition" and decode_ts(received[-1]["endVersion"]["ts"]) >= last_ts):
            received.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    finally:
        stop.set()
        await ws.close()
    others = sum(await asyncio.gather(*writers))
    assert others > 0  # the writers ran alongside

    newest_ts = 0  # of the Transitions so far
    values: list[int] = []
    responses = 0
    late: list[str] = []  # responses that came after a Transition carrying their write
    for message in received:
        if message["type"] == "Transition":
            newest_ts = decode_ts(message["endVersion"]["ts"])
            values += [m["value"] for m in message["modifications"] if m["type"] == "QueryUpdated"]
        elif message["type"] == "MutationResponse":
            assert message["success"], message
            responses += 1
            ts = decode_ts(message["ts"])
            if newest_ts >= ts:
                late.append(f"mutation {message['requestId']} (ts {ts}) after a Transition to ts {newest_ts}")
    assert late == [], f"{len(late)} of {responses} MutationResponses came after a Transition carrying their write"
    assert responses == MUTATIONS
    assert values == sorted(values) and values[-1] >= MUTATIONS  # never backwards; all of them counted


@pytest.mark.e2e
async def test_an_actions_writes_reach_its_client_while_it_runs(basic_server: ServerProcess) -> None:
    """Convex orders nothing between an ActionResponse (no ts; resolved at once; no optimistic
    update) and the Transitions with the writes of the mutations the action ran: nothing is held
    back while an action runs. The action waits until the client has seen its write."""
    server = basic_server
    url = server.url.replace("http://", "ws://") + "/api/sync"
    name, flag = f"action-{uuid.uuid4().hex[:8]}", f"flag-{uuid.uuid4().hex[:8]}"
    ws = await _connect(url)
    try:
        await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "counters:get", "args": [{"name": name}]}]}))
        await ws.send(json.dumps({"type": "Action", "requestId": 0, "udfPath": "ordering:inc_then_wait_for",
                                  "args": [{"name": name, "flag": flag}]}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert message["type"] != "ActionResponse", message
            if message["type"] == "Transition" and any(m.get("value") == 1 for m in message["modifications"]):
                break  # the action's write, while the action still runs
        await ws.send(json.dumps({"type": "Mutation", "requestId": 1, "udfPath": "counters:inc", "args": [{"name": flag}]}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] == "ActionResponse":
                assert message["success"] and message["result"] == 1, message
                break
    finally:
        await ws.close()
