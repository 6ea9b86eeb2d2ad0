"""A real uvicorn server with Ripple's own uvicorn settings (`server.runner.uvicorn_config`),
stopping as Ripple's does (`server.stopping.StoppingServer`), whose websocket writes through
server/api/uvicorn_frames.py, for tests/test_uvicorn_frames.py.

    python tests/frame_server.py PORT [--deflate] [--ws IMPLEMENTATION]

A websocket client first receives `{"fast": <whether a FrameWriter engaged>}` (sent through
ASGI). Then each message `{"repeat": n, "text": s}` is answered with n messages `s`, written
through the FrameWriter (waiting whenever it is not writable now), or through ASGI sends when
none engaged. `GET /waits` answers how many times a write had to wait for the transport.

For tests/test_ws_protocol.py, other websocket paths: `/echo` answers each message with the
same (text or bytes, through ASGI sends), accepting the first subprotocol offered; `/hold`
does the same once `GET /release` was asked; `/keepalive` too, calling the writer's
`keepalive()` every 0.1 s; `/close` closes at once with code 4000 and
reason "done"; `/refuse` closes before accepting (403); `/deny` answers HTTP 401 with body
"no" (the ASGI websocket denial response). `GET /disconnects` lists the code and reason of
each `websocket.disconnect` the application received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from server.api.uvicorn_frames import frame_writer
from server.config import Config
from server.runner import uvicorn_config
from server.stopping import StoppingServer

waits = 0
disconnects: list[list[Any]] = []
release = asyncio.Event()


async def keepalive(send: Any) -> None:
    """What sync_ws's process-wide timer does for each connection, every 0.1 s."""
    writer = frame_writer(send)
    assert writer is not None
    while True:
        await asyncio.sleep(0.1)
        writer.keepalive()


async def other(path: str, receive: Any, send: Any, subprotocols: list[str]) -> None:
    assert (await receive())["type"] == "websocket.connect"
    if path == "/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    if path == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-why", b"test")]})
        await send({"type": "websocket.http.response.body", "body": b"no"})
        return
    await send({"type": "websocket.accept", "subprotocol": subprotocols[0] if subprotocols else None})
    if path == "/close":
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})
    if path == "/hold":
        await release.wait()
    pinger = asyncio.create_task(keepalive(send)) if path == "/keepalive" else None
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            disconnects.append([message["code"], message.get("reason", "")])
            if pinger is not None:
                pinger.cancel()
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global waits
    if scope["type"] == "lifespan":
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":
        if scope["path"] == "/release":
            release.set()
        body = json.dumps({"waits": waits, "disconnects": disconnects}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] != "/frames":
        await other(scope["path"], receive, send, scope["subprotocols"])
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    writer = frame_writer(send)
    await send({"type": "websocket.send", "text": json.dumps({"fast": writer is not None})})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        request = json.loads(message["text"])
        for _ in range(request["repeat"]):
            if writer is None:
                await send({"type": "websocket.send", "text": request["text"]})
                continue
            if not writer.writable_now():
                waits += 1
                if not await writer.wait_writable():
                    return
            writer.write(request["text"].encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--ws")
    parser.add_argument("--max-size", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn_config(app, Config(host="127.0.0.1", port=args.port, ws_compression=args.deflate))
    if args.max_size:
        config.ws_max_size = args.max_size
    if args.ws:
        config.ws = args.ws  # read when the server loads its protocol classes
    StoppingServer(config, on_stop=lambda: None).run()


if __name__ == "__main__":
    main()
