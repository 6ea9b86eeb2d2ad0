"""The blob stores (server/core/storage/blobs.py, s3.py, backend.py): one contract, run against
local disk and against S3 (moto's server on loopback, reached through the minio SDK over real
HTTP). What is left behind is listed from the directory or the bucket itself."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import threading
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from server.config import StorageConfig
from server.core.storage import s3
from server.core.storage.backend import open_store
from server.core.storage.blobs import (
    CHUNK_BYTES,
    BlobStore,
    LocalDisk,
    NotFound,
    Part,
    TooLarge,
    Unsupported,
    digest,
)

from conftest import S3Server, free_port

MiB = 1 << 20
PART = s3.MIN_PART_BYTES  # the S3 store under test uses S3's smallest parts: more parts per MiB


def s3_config(server: S3Server, bucket: str) -> StorageConfig:
    return StorageConfig(backend="s3", s3_endpoint=server.endpoint, s3_bucket=bucket, s3_access_key=server.access_key,
                         s3_secret_key=server.secret_key, s3_secure=False)


@pytest.fixture(params=["local", "s3"])
async def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        yield open_store(StorageConfig(), tmp_path)
        return
    server: S3Server = request.getfixturevalue("s3_server")
    store = open_store(s3_config(server, request.getfixturevalue("s3_bucket")), tmp_path, part_bytes=PART)
    assert isinstance(store, s3.S3Store)
    yield store
    store.close()


def leftovers(store: BlobStore, request: pytest.FixtureRequest) -> list[str]:
    """Everything the store holds: files (finished or not) under its directory, or objects and
    unfinished multipart uploads in its bucket."""
    if isinstance(store, LocalDisk):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    assert isinstance(store, s3.S3Store)
    server: S3Server = request.getfixturevalue("s3_server")
    return server.leftovers(store.bucket)


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset of a MiB, so a misplaced range or chunk shows."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    block = bytes((b + i // 32) % 256 for i, b in enumerate(block[:4096])) * (MiB // 4096)
    return (block * (size // MiB + 1))[:size]


async def stream(data: bytes, chunk: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]


async def generated(size: int) -> AsyncIterator[bytes]:
    """`size` bytes made chunk by chunk, never all at once (for memory measurements)."""
    block = os.urandom(CHUNK_BYTES)
    sent = 0
    while sent < size:
        n = min(CHUNK_BYTES, size - sent)
        yield block[:n - 8] + sent.to_bytes(8, "big") if n > 8 else block[:n]
        sent += n


async def read_all(store: BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    out = bytearray()
    async for chunk in await store.read(key, start, end):
        assert 0 < len(chunk) <= CHUNK_BYTES
        out += chunk
    return bytes(out)


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("size", [0, 1000, 3 * MiB + 5, 2 * PART + 3 * MiB + 17])
async def test_put_then_read_back_size_hash_and_delete(blob_store: BlobStore, size: int,
                                                       request: pytest.FixtureRequest) -> None:
    data = pattern(size)
    written = await blob_store.put("kabc123", stream(data, 300_000), max_bytes=size, content_type="image/png")
    assert (written.size, written.sha256) == (size, sha(data))
    assert await read_all(blob_store, "kabc123") == data
    assert await blob_store.size("kabc123") == size
    assert await digest(blob_store, "kabc123") == written
    await blob_store.delete("kabc123")
    assert await blob_store.size("kabc123") is None
    assert leftovers(blob_store, request) == []
    await blob_store.delete("kabc123")  # absent: no error


async def test_ranges(blob_store: BlobStore) -> None:
    data = pattern(3 * MiB + 100, seed=1)
    await blob_store.put("k1", stream(data))
    for start, end in [(0, 1), (5, 6), (1000, 2 * MiB + 7), (MiB, None), (3 * MiB, 3 * MiB + 100),
                       (len(data) - 1, None), (10, 10), (len(data), None), (len(data) + 5, len(data) + 9),
                       (len(data) - 3, len(data) + 50)]:
        assert await read_all(blob_store, "k1", start, end) == data[start:end], (start, end)


async def test_a_missing_key_is_not_found_before_any_byte(blob_store: BlobStore) -> None:
    for start, end in [(0, None), (3, 10), (4, 4)]:
        with pytest.raises(NotFound):
            await blob_store.read("knothere", start, end)
    assert await blob_store.size("knothere") is None
    with pytest.raises(ValueError, match="invalid storage key"):
        await blob_store.size("../etc")


async def test_a_put_replaces_the_previous_bytes(blob_store: BlobStore) -> None:
    await blob_store.put("k2", stream(b"first version"))
    await blob_store.put("k2", stream(b"second"))
    assert await read_all(blob_store, "k2") == b"second"


async def test_too_large_leaves_nothing(blob_store: BlobStore, request: pytest.FixtureRequest) -> None:
    with pytest.raises(TooLarge) as small:
        await blob_store.put("k3", stream(b"x" * 11), max_bytes=10)
    assert small.value.limit == 10
    # past a part on S3: the multipart upload has begun when the limit is crossed
    with pytest.raises(TooLarge):
        await blob_store.put("k3", stream(pattern(PART + 3 * MiB)), max_bytes=PART + 2 * MiB)
    assert leftovers(blob_store, request) == []
    assert await blob_store.size("k3") is None


async def failing(data: bytes, then: BaseException) -> AsyncIterator[bytes]:
    async for chunk in stream(data):
        yield chunk
    raise then


@pytest.mark.parametrize("size", [MiB, 2 * PART + MiB])
async def test_a_stream_failing_midway_leaves_nothing(blob_store: BlobStore, size: int,
                                                      request: pytest.FixtureRequest) -> None:
    with pytest.raises(ConnectionResetError):
        await blob_store.put("k4", failing(pattern(size), ConnectionResetError("client went away")))
    assert leftovers(blob_store, request) == []


@pytest.mark.parametrize("size", [MiB, 2 * PART + MiB])
async def test_cancelling_a_put_leaves_nothing(blob_store: BlobStore, size: int,
                                               request: pytest.FixtureRequest) -> None:
    sent, hold = asyncio.Event(), asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in stream(pattern(size)):
            yield chunk
        sent.set()
        await hold.wait()  # the client stops sending; the request is cancelled
        yield b"never"

    task = asyncio.create_task(blob_store.put("k5", stalls()))
    await asyncio.wait_for(sent.wait(), 30)
    await asyncio.sleep(0.05)  # let parts already handed over reach the bucket
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(blob_store, request) == []
    assert await blob_store.size("k5") is None


async def test_a_large_file_streams_through_bounded_memory(blob_store: BlobStore) -> None:
    """48 MiB each way, through tracemalloc (this process only: the S3 server runs in its own):
    local disk holds a few chunks (the test's own generator makes two), S3 also the part filling
    (twice while it is joined) and the parts uploading: 4 MiB and 26 MiB when written."""
    size = 48 * MiB
    bound = 8 * MiB if isinstance(blob_store, LocalDisk) else (s3.MAX_PARTS_IN_FLIGHT + 3) * PART + 4 * MiB
    tracemalloc.start()
    try:
        written = await blob_store.put("k6", generated(size))
        _, peak_in = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert await digest(blob_store, "k6") == written
        _, peak_out = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written.size == size
    assert peak_in < bound, f"put peaked at {peak_in / MiB:.1f} MiB"
    assert peak_out < 8 * MiB, f"read peaked at {peak_out / MiB:.1f} MiB"


async def test_local_disk_has_no_direct_uploads_and_serves_files_itself(tmp_path: Path) -> None:
    store = open_store(StorageConfig(), tmp_path)
    assert isinstance(store, LocalDisk) and store.root == tmp_path / ".ripple" / "storage"
    assert store.download_url("kx", 60) is None
    with pytest.raises(Unsupported):
        await store.start_multipart("kx", None)
    with pytest.raises(Unsupported):
        store.part_url("kx", "u", 1, 60)
    with pytest.raises(Unsupported):
        await store.complete_multipart("kx", "u", [])
    with pytest.raises(Unsupported):
        await store.abort_multipart("kx", "u")
    other = open_store(StorageConfig(local_dir=tmp_path / "elsewhere"), tmp_path)
    assert isinstance(other, LocalDisk) and other.root == tmp_path / "elsewhere"


@pytest.fixture
async def s3_store(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> AsyncIterator[s3.S3Store]:
    store = open_store(s3_config(s3_server, s3_bucket), tmp_path, part_bytes=PART)
    assert isinstance(store, s3.S3Store)
    yield store
    store.close()


async def test_s3_creates_its_bucket_at_first_use(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    first = open_store(s3_config(s3_server, s3_bucket), tmp_path)
    assert not s3_server.client().bucket_exists(s3_bucket)  # opening touches no network
    await first.put("kone", stream(b"1"))
    assert s3_server.client().bucket_exists(s3_bucket)
    second = open_store(s3_config(s3_server, s3_bucket), tmp_path)  # exists now: kept as it is
    assert await read_all(second, "kone") == b"1"
    for store in (first, second):
        assert isinstance(store, s3.S3Store)
        store.close()


async def test_s3_download_url_is_presigned_with_the_content_type(s3_store: s3.S3Store) -> None:
    data = pattern(100_000)
    await s3_store.put("kdl", stream(data), content_type="text/plain")
    url = s3_store.download_url("kdl", 60, "image/webp")
    assert url is not None and "X-Amz-Signature=" in url
    async with httpx.AsyncClient() as http:
        got = await http.get(url)
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-type"] == "image/webp"
        tampered = await http.get(url.replace("kdl", "kdm"))
        assert tampered.status_code == 403


async def test_s3_direct_multipart_upload(s3_store: s3.S3Store, request: pytest.FixtureRequest) -> None:
    """A client PUTs the parts to presigned URLs itself; Ripple completes and then hashes."""
    data = pattern(PART + 2 * MiB + 3, seed=7)
    upload_id = await s3_store.start_multipart("kmp", "video/mp4")
    parts = []
    async with httpx.AsyncClient(timeout=60) as http:
        for number, piece in ((2, data[PART:]), (1, data[:PART])):  # any order
            answer = await http.put(s3_store.part_url("kmp", upload_id, number, 300), content=piece)
            assert answer.status_code == 200, answer.text
            parts.append(Part(number, answer.headers["etag"]))
    assert await s3_store.size("kmp") is None  # invisible until completed
    await s3_store.complete_multipart("kmp", upload_id, parts)
    assert await digest(s3_store, "kmp") == (await s3_store.put("kcopy", stream(data)))
    assert await read_all(s3_store, "kmp", PART - 2, PART + 2) == data[PART - 2:PART + 2]
    with pytest.raises(ValueError, match="1 to 10000"):
        s3_store.part_url("kmp", upload_id, 0, 60)
    assert sorted(leftovers(s3_store, request)) == ["object kcopy", "object kmp"]


async def test_s3_aborting_a_direct_upload_leaves_nothing(s3_store: s3.S3Store,
                                                          request: pytest.FixtureRequest) -> None:
    upload_id = await s3_store.start_multipart("kab", None)
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.put(s3_store.part_url("kab", upload_id, 1, 300), content=pattern(PART))
        assert answer.status_code == 200
    assert len(leftovers(s3_store, request)) == 1  # the unfinished upload
    await s3_store.abort_multipart("kab", upload_id)
    await s3_store.abort_multipart("kab", upload_id)  # again: no error
    assert leftovers(s3_store, request) == []
    assert await s3_store.size("kab") is None


async def test_s3_settings_are_checked_with_clear_errors(s3_server: S3Server, tmp_path: Path) -> None:
    good = s3_config(s3_server, "b")
    for change, message in [({"s3_endpoint": ""}, "needs RIPPLE_S3_ENDPOINT"),
                            ({"s3_endpoint": "http://host:9000/path"}, "must be host\\[:port\\]"),
                            ({"s3_access_key": ""}, "needs RIPPLE_S3_ACCESS_KEY"),
                            ({"s3_access_key": "", "s3_secret_key": ""}, "RIPPLE_S3_ACCESS_KEY and RIPPLE_S3_SECRET_KEY"),
                            ({"s3_bucket": ""}, "RIPPLE_S3_BUCKET is empty"),
                            ({"backend": "gcs"}, "must be 'local' or 's3'")]:
        config = StorageConfig(**{**good.__dict__, **change})
        with pytest.raises(ValueError, match=message):
            open_store(config, tmp_path)


async def test_s3_endpoint_may_be_a_url(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    config = s3_config(s3_server, s3_bucket)
    config = StorageConfig(**{**config.__dict__, "s3_endpoint": f"http://{s3_server.endpoint}/", "s3_secure": True})
    store = open_store(config, tmp_path)  # the scheme wins over s3_secure
    assert isinstance(store, s3.S3Store)
    await store.put("kurl", stream(b"ok"))
    assert await store.size("kurl") == 2
    store.close()


async def test_s3_unreachable_is_a_connection_error_naming_the_endpoint(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = StorageConfig(backend="s3", s3_endpoint=dead, s3_access_key="a", s3_secret_key="b", s3_secure=False,
                           s3_retries=0)  # fail at the first refusal, not after 6 s of retries
    store = open_store(config, tmp_path)  # no network yet: a server starts while S3 is down
    assert isinstance(store, s3.S3Store)
    assert store.download_url("kx", 60) is not None  # presigning is local
    # the first call checks the bucket, and fails
    with pytest.raises(ConnectionError, match=f"S3 endpoint {dead} unreachable"):
        await store.size("kx")
    assert not store._bucket_ready  # so the next call tries again
    store.close()


@pytest.mark.parametrize("retries", [0, 2])
async def test_s3_calls_are_tried_again_as_often_as_configured(tmp_path: Path, retries: int) -> None:
    """RIPPLE_S3_RETRIES: a call whose connection is cut is made again `retries` more times."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted = 0

        def hang_up() -> None:  # accepts each connection and closes it unanswered
            nonlocal accepted
            listener.settimeout(10)
            with contextlib.suppress(OSError):
                while True:
                    listener.accept()[0].close()
                    accepted += 1

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
        config = StorageConfig(backend="s3", s3_endpoint=endpoint, s3_access_key="a", s3_secret_key="b",
                               s3_secure=False, s3_retries=retries)
        store = open_store(config, tmp_path)
        with pytest.raises(ConnectionError, match=f"S3 endpoint {endpoint} unreachable"):
            await store.size("kx")
        store.close()
        listener.shutdown(socket.SHUT_RDWR)
    thread.join(10)
    assert accepted == 1 + retries
