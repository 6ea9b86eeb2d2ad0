"""The HTTP floor bench/storage.py calibrates against: uvicorn + Starlette as Ripple runs them,
receiving a POSTed body and throwing it away, and sending a body of zeros, in 1 MiB blocks. No
storage, no hashing, no database: the least an HTTP upload or download through this stack costs.

    python -m uvicorn storage_floor:app --port PORT   (run from bench/)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BLOCK = b"\0" * (1 << 20)


async def upload(request: Request) -> Response:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse({"storageId": str(size)})


async def download(request: Request) -> Response:
    size = int(request.path_params["size"])

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            yield BLOCK[:min(left, len(BLOCK))]
            left -= len(BLOCK)

    return StreamingResponse(body(), headers={"content-length": str(size)})


app = Starlette(routes=[Route("/upload", upload, methods=["POST"]), Route("/download/{size:int}", download)])
