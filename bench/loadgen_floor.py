"""Floor server for bench/loadgen.py's RunFunction scenario: the least work that answers the
Convex sync protocol the way the load generator needs, with no database and no functions.

A ModifyQuerySet gets one Transition: a QueryUpdated per Add whose value is
`{"key": <the args' key>, "value": 0}`, a QueryRemoved per Remove. A Mutation gets a
MutationResponse at a new ts, then a Transition to that ts. Runs on the `websockets` library's
own asyncio server: what bench/loadgen_clients.mjs measures against it is what the Node clients,
loopback and this machine allow at best.

    python bench/loadgen_floor.py --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import struct
import time
from typing import Any


def encode_ts(ts: int) -> str:
    return base64.b64encode(struct.pack("<Q", ts)).decode()


class FloorSession:
    """The versions of one connection, and the replies to one client message."""

    def __init__(self) -> None:
        self.query_set = 0
        self.ts = 0

    def _next_ts(self) -> int:
        self.ts = max(self.ts + 1, time.time_ns())
        return self.ts

    def _transition(self, start: tuple[int, int], modifications: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "Transition", "modifications": modifications,
                "startVersion": {"querySet": start[0], "identity": 0, "ts": encode_ts(start[1])},
                "endVersion": {"querySet": self.query_set, "identity": 0, "ts": encode_ts(self.ts)}}

    def reply(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        start = (self.query_set, self.ts)
        if message["type"] == "ModifyQuerySet":
            self.query_set = message["newVersion"]
            mods = []
            for m in message["modifications"]:
                if m["type"] == "Add":
                    key = (m["args"][0] or {}).get("key")
                    mods.append({"type": "QueryUpdated", "queryId": m["queryId"], "value": {"key": key, "value": 0},
                                 "logLines": [], "journal": None})
                else:
                    mods.append({"type": "QueryRemoved", "queryId": m["queryId"]})
            return [self._transition(start, mods)]
        if message["type"] == "Mutation":
            ts = self._next_ts()
            response = {"type": "MutationResponse", "requestId": message["requestId"], "success": True,
                        "result": None, "ts": encode_ts(ts), "logLines": []}
            return [response, self._transition(start, [])]
        return []


async def serve(port: int) -> None:
    from websockets.asyncio.server import serve as ws_serve

    async def handler(ws: Any) -> None:
        session = FloorSession()
        async for raw in ws:
            for out in session.reply(json.loads(raw)):
                await ws.send(json.dumps(out))

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with ws_serve(handler, "127.0.0.1", port, compression=None, max_size=None):
        print(f"floor listening on {port}", flush=True)
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
