"""File storage (docs/storage.md) through a real server over HTTP, for every blob store backend
(the `storage_backend` fixture): upload URLs, ctx.storage in queries, mutations and actions,
downloads, bad input, and what is left behind in the store (checked directly, never through
Ripple) when uploads fail or files are deleted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from client_sdk import RippleClient
from server.config import StorageConfig
from server.core.ids import new_id
from server.core.storage import tokens
from server.core.storage.backend import open_store
from server.core.storage.blobs import BlobStore, LocalDisk
from server.core.system_tables import STORAGE

from conftest import (
    ROOT,
    S3Server,
    ServerProcess,
    call,
    database_url,
    free_port,
    open_runtime,
    run_node_tests,
    until,
)
from oidc_issuer import OidcIssuer

pytestmark = pytest.mark.e2e

STORAGE_APP = ROOT / "tests" / "apps" / "storage"
MB = 1024 * 1024


@dataclass
class Backend:
    """A blob store backend as a server is configured for it (`env`) and as the test sees it
    directly (`store`, and `objects`: every object or partial file in it)."""

    name: str
    env: dict[str, str]
    store: BlobStore
    objects: Callable[[], set[str]]


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    root = tmp_path / "blobs"
    yield Backend("local", {"RIPPLE_STORAGE": "local", "RIPPLE_STORAGE_DIR": str(root)}, LocalDisk(root),
                  lambda: {p.name for p in root.rglob("*") if p.is_file()})


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """moto's S3 server (conftest's `s3_server`), a bucket of the test's own; `objects` lists its
    objects and its unfinished multipart uploads, as the minio SDK sees them."""
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = "t-" + secrets.token_hex(6)
    env = server.env(bucket)
    config = StorageConfig(backend="s3", s3_endpoint=server.endpoint, s3_bucket=bucket,
                           s3_access_key=server.access_key, s3_secret_key=server.secret_key, s3_secure=False)

    def objects() -> set[str]:
        client = server.client()
        if not client.bucket_exists(bucket):
            return set()
        names = {o.object_name for o in client.list_objects(bucket, recursive=True)}
        return names | {f"multipart upload {u.object_name}" for u in client._list_multipart_uploads(bucket).uploads}

    yield Backend("s3", env, open_store(config, tmp_path), objects)


BACKENDS = {"local": _local, "s3": _s3}


@pytest.fixture(params=sorted(BACKENDS))
def storage_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn (name -> generator of a Backend)."""
    yield from BACKENDS[request.param](request, tmp_path)


@pytest.fixture
def files_server(start_server: Callable[..., ServerProcess], storage_backend: Backend) -> Callable[..., ServerProcess]:
    def start(mode: str = "dev", app_dir: Path = STORAGE_APP, **env: str) -> ServerProcess:
        return start_server(mode, app_dir, extra_env={**storage_backend.env, **env})

    return start


async def value(c: httpx.AsyncClient, kind: str, path: str, args: dict[str, Any] | None = None) -> Any:
    r = await call(c, kind, path, args)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    return r.json()["value"]


async def error(c: httpx.AsyncClient, kind: str, path: str, args: dict[str, Any] | None = None) -> str:
    r = await call(c, kind, path, args)
    assert r.status_code == 200 and r.json()["status"] == "error", r.text
    return str(r.json()["errorMessage"])


async def upload(c: httpx.AsyncClient, data: bytes, content_type: str | None = "text/plain") -> str:
    url = await value(c, "mutation", "files:upload_url")
    headers = {"content-type": content_type} if content_type else {}
    r = await c.post(url, content=data, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["storageId"])


def b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


async def pending_rows(namespace: str) -> int:
    conn = await asyncpg.connect(database_url())
    try:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{namespace}"._ripple_storage_pending'))
    finally:
        await conn.close()


# -- the upload flow ----------------------------------------------------------------------------

async def test_upload_url_flow_metadata_urls_and_the_system_table(files_server, storage_backend: Backend) -> None:
    server = files_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        url = await value(c, "mutation", "files:upload_url")
        assert url.startswith(f"{server.url}/api/storage/upload?token=")
        assert (await value(c, "action", "files:upload_url_from_action")).startswith(f"{server.url}/api/storage/upload?token=")
        r = await c.post(url, content=b"hello world", headers={"content-type": "text/plain"})
        assert r.status_code == 200, r.text
        sid = r.json()["storageId"]
        assert set(r.json()) == {"storageId"}
        assert await value(c, "query", "files:normalize", {"id": sid}) == sid

        doc = await value(c, "query", "files:doc", {"id": sid})
        assert doc["_id"] == sid and doc["size"] == 11 and doc["contentType"] == "text/plain"
        assert doc["sha256"] == b64(b"hello world") and isinstance(doc["_creationTime"], float)
        assert await value(c, "query", "files:metadata", {"id": sid}) == {
            "storageId": sid, "size": 11, "contentType": "text/plain",
            "sha256": hashlib.sha256(b"hello world").hexdigest(),
        }
        file_url = await value(c, "query", "files:url", {"id": sid})
        assert file_url == f"{server.url}/api/storage/{sid}"
        got = await c.get(file_url, follow_redirects=True)
        assert got.status_code == 200 and got.content == b"hello world"
        assert sid in storage_backend.objects()

        # Without a Content-Type the document has none (absent, as in Convex).
        bare = await upload(c, b"\x00\x01", content_type=None)
        assert "contentType" not in await value(c, "query", "files:doc", {"id": bare})
        assert (await value(c, "query", "files:metadata", {"id": bare}))["contentType"] is None

        # A user table's Id["_storage"] field takes it; another table's id is refused.
        attached = await value(c, "mutation", "files:attach", {"name": "a", "file": sid})
        assert attached == {"name": "a", "url": file_url}
        note = await value(c, "mutation", "files:note")
        r = await call(c, "mutation", "files:attach", {"name": "b", "file": note})
        assert r.status_code == 400 and "_storage" in r.text
        for path in ("files:url", "files:metadata"):
            assert "is a document id of table notes, not a storage id" in await error(c, "query", path, {"id": note})
            assert "is not a storage id" in await error(c, "query", path, {"id": "nonsense"})
        assert await value(c, "query", "files:normalize", {"id": note}) is None


async def test_a_live_query_of_the_storage_table_sees_an_upload(files_server) -> None:
    server = files_server()
    async with RippleClient(server.url) as client, httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        files = client.subscribe("files:all", {})
        assert await files.__anext__() == []
        sid = await upload(c, b"live")
        latest = await asyncio.wait_for(files.__anext__(), 15)
        assert [d["_id"] for d in latest] == [sid] and latest[0]["size"] == 4
        urls = client.subscribe("files:url", {"id": sid})
        assert await urls.__anext__() == f"{server.url}/api/storage/{sid}"
        await value(c, "mutation", "files:delete", {"id": sid})
        assert await asyncio.wait_for(urls.__anext__(), 15) is None  # the URL query follows the delete
        assert await asyncio.wait_for(files.__anext__(), 15) == []
        await files.aclose()
        await urls.aclose()


# -- bad uploads: each answered clearly, nothing left behind ------------------------------------

async def test_bad_uploads_store_nothing(files_server, storage_backend: Backend, namespace: str) -> None:
    limit = 2 * MB
    server = files_server(RIPPLE_STORAGE_MAX_UPLOAD_BYTES=str(limit))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        kept = await upload(c, b"kept")
        base = f"{server.url}/api/storage/upload"

        r = await c.post(base, content=b"x")
        assert r.status_code == 403 and r.json()["code"] == "MissingUploadToken"
        url = await value(c, "mutation", "files:upload_url")
        expiry, nonce, mac = url.split("token=")[1].split(".")
        forged = f"{base}?token={int(expiry) + 3600}.{nonce}.{mac}"
        r = await c.post(forged, content=b"x")
        assert r.status_code == 403 and r.json()["code"] == "InvalidUploadToken"
        r = await c.post(f"{base}?token=garbage", content=b"x")
        assert r.status_code == 403 and r.json()["code"] == "InvalidUploadToken"

        conn = await asyncpg.connect(database_url())
        try:
            secret = await conn.fetchval(f"""SELECT value #>> '{{}}' FROM "{namespace}"._ripple_meta WHERE key = 'storage_secret'""")
        finally:
            await conn.close()
        expired = tokens.sign(bytes.fromhex(secret), time.time() - 2 * tokens.TOKEN_SECONDS)
        r = await c.post(f"{base}?token={expired}", content=b"x")
        assert r.status_code == 403 and r.json()["code"] == "UploadUrlExpired"

        # Empty bodies: by Content-Length (the URL stays usable), and streamed with none.
        r = await c.post(url, content=b"")
        assert r.status_code == 400 and r.json()["code"] == "EmptyUpload"

        async def nothing() -> AsyncIterator[bytes]:
            if False:
                yield b""

        r = await c.post(url, content=nothing())
        assert r.status_code == 400 and r.json()["code"] == "EmptyUpload"
        r = await c.post(url, content=b"late")  # the streamed attempt used the URL up
        assert r.status_code == 403 and r.json()["code"] == "UploadUrlUsed"

        # Over the limit: said by Content-Length (refused before reading), and found on the way.
        url = await value(c, "mutation", "files:upload_url")
        r = await c.post(url, content=b"x" * (limit + 1))
        assert r.status_code == 413 and r.json()["code"] == "FileTooLarge"

        async def endless() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * MB

        r = await c.post(url, content=endless())
        assert r.status_code == 413 and r.json()["code"] == "FileTooLarge"

        # A client that goes away mid-upload.
        url = await value(c, "mutation", "files:upload_url")
        target = httpx.URL(url)
        _, writer = await asyncio.open_connection(target.host, target.port)
        writer.write(f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: x\r\nContent-Type: a/b\r\n"
                     f"Content-Length: {limit}\r\n\r\n".encode() + b"z" * (limit // 2))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        await until(lambda: storage_backend.objects() == {kept}, timeout=15)
        files = await value(c, "query", "files:all")
        assert [f["_id"] for f in files] == [kept]
        await until_async(lambda: pending_rows(namespace), 0)
    assert "Traceback" not in server.log()


async def until_async(get: Callable[[], Any], expected: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await get()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, not {expected!r}"
        await asyncio.sleep(0.05)


# -- downloads ------------------------------------------------------------------------------------

async def test_download_ranges_etags_and_unknown_ids(files_server, storage_backend: Backend) -> None:
    if storage_backend.name != "local":
        pytest.skip("Ripple serves the bytes itself only from local disk; S3 answers with a redirect")
    server = files_server()
    data = bytes(range(256)) * 40  # 10240 bytes
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        sid = await upload(c, data, "application/x-test")
        path = f"/api/storage/{sid}"
        r = await c.get(path)
        etag = f'"{b64(data)}"'
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-type"] == "application/x-test" and r.headers["content-length"] == str(len(data))
        assert r.headers["etag"] == etag and r.headers["accept-ranges"] == "bytes"
        assert r.headers["digest"] == f"sha-256={b64(data)}"

        for header, (start, end) in {"bytes=0-99": (0, 100), "bytes=10000-": (10000, 10240),
                                     "bytes=-40": (10200, 10240), "bytes=5000-99999": (5000, 10240)}.items():
            r = await c.get(path, headers={"range": header})
            assert r.status_code == 206 and r.content == data[start:end], header
            assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{len(data)}"
            assert r.headers["content-length"] == str(end - start)
        r = await c.get(path, headers={"range": "bytes=10240-"})
        assert r.status_code == 416 and r.headers["content-range"] == "bytes */10240"
        r = await c.get(path, headers={"range": "bytes=0-1,5-6"})  # several ranges: the whole file
        assert r.status_code == 200 and r.content == data

        r = await c.get(path, headers={"if-none-match": etag})
        assert r.status_code == 304 and r.content == b""
        r = await c.get(path, headers={"if-none-match": '"other"'})
        assert r.status_code == 200
        r = await c.head(path)
        assert r.status_code == 200 and r.headers["content-length"] == str(len(data)) and r.content == b""

        note = await value(c, "mutation", "files:note")
        r = await c.get(f"/api/storage/{note}")
        assert r.status_code == 400 and r.json()["code"] == "InvalidStorageId"
        r = await c.get("/api/storage/not-an-id")
        assert r.status_code == 400 and r.json()["code"] == "InvalidStorageId"
        await value(c, "mutation", "files:delete", {"id": sid})
        r = await c.get(path)
        assert r.status_code == 404 and r.json()["code"] == "FileNotFound"


# -- deleting -------------------------------------------------------------------------------------

async def test_delete_takes_effect_only_when_the_mutation_commits(files_server, storage_backend: Backend,
                                                                  namespace: str) -> None:
    server = files_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        sid = await upload(c, b"precious")
        assert "changed my mind" in await error(c, "mutation", "files:delete_then_fail", {"id": sid})
        assert await value(c, "mutation", "files:delete_nested_failing", {"id": sid}) is False
        await asyncio.sleep(0.5)  # an after-commit removal would have run by now
        assert sid in storage_backend.objects()
        assert (await c.get(f"/api/storage/{sid}", follow_redirects=True)).content == b"precious"
        assert await value(c, "query", "files:url", {"id": sid}) is not None

        await value(c, "mutation", "files:delete", {"id": sid})
        assert await value(c, "query", "files:url", {"id": sid}) is None
        assert await value(c, "query", "files:metadata", {"id": sid}) is None
        assert await value(c, "action", "files:read", {"id": sid}) is None
        await until(lambda: sid not in storage_backend.objects())
        await until_async(lambda: pending_rows(namespace), 0)
        assert "no stored file" in await error(c, "mutation", "files:delete", {"id": sid})

        other = await upload(c, b"from an action")
        await value(c, "action", "files:action_delete", {"id": other})
        await until(lambda: other not in storage_backend.objects())
        assert await value(c, "action", "files:action_metadata", {"id": other}) == {"url": None, "metadata": None}


# -- actions --------------------------------------------------------------------------------------

async def test_actions_store_and_read_files(files_server, storage_backend: Backend) -> None:
    server = files_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        sid = await value(c, "action", "files:store", {"text": "stored by an action", "content_type": "text/x-note"})
        assert await value(c, "action", "files:read", {"id": sid}) == {
            "text": "stored by an action", "size": 19, "contentType": "text/x-note"}
        got = await value(c, "action", "files:action_metadata", {"id": sid})
        assert got["url"] == f"{server.url}/api/storage/{sid}"
        assert got["metadata"]["sha256"] == hashlib.sha256(b"stored by an action").hexdigest()

        checked = hashlib.sha256(b"checked").hexdigest()
        assert await value(c, "action", "files:store", {"text": "checked", "sha256": checked})
        before = storage_backend.objects()
        assert "nothing was stored" in await error(c, "action", "files:store", {"text": "other", "sha256": checked})

        big = await value(c, "action", "files:store_streamed", {"parts": 5, "size": 700_000})  # 3.5 MB
        assert await value(c, "action", "files:read_chunks", {"id": big}) == [MB, MB, MB, 3_500_000 - 3 * MB]
        r = await c.get(f"/api/storage/{big}", follow_redirects=True)
        assert r.content == b"".join(bytes([i]) * 700_000 for i in range(5))
        assert storage_backend.objects() == before | {big}

        note = await value(c, "mutation", "files:note")
        assert "not a storage id" in await error(c, "action", "files:read", {"id": note})


async def test_direct_multipart_uploads_need_s3(files_server, storage_backend: Backend) -> None:
    if storage_backend.name != "local":
        pytest.skip("local disk only: S3 takes them (test_direct_multipart_upload)")
    server = files_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        message = await error(c, "action", "files:start_multipart", {"parts": 2})
        assert "direct multipart uploads need the S3 storage backend" in message
        assert storage_backend.objects() == set()


async def test_direct_multipart_upload(files_server, storage_backend: Backend, namespace: str) -> None:
    """50 MB straight to the bucket in parts, as a browser would PUT them, then completed."""
    if storage_backend.name == "local":
        pytest.skip("direct multipart uploads need the S3 backend")
    server = files_server()
    part_size = 10 * MB
    data = b"".join(bytes([i]) * part_size for i in range(5))
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
        started = await value(c, "action", "files:start_multipart", {"parts": 5, "content_type": "video/mp4"})
        sid, upload_id = started["storageId"], started["uploadId"]
        parts = []
        for n, part_url in enumerate(started["partUrls"], start=1):
            r = await c.put(part_url, content=data[(n - 1) * part_size:n * part_size])
            assert r.status_code == 200, r.text
            parts.append({"partNumber": n, "etag": r.headers["etag"]})
        assert await value(c, "query", "files:url", {"id": sid}) is None  # not registered before completion
        assert await value(c, "action", "files:complete_multipart",
                           {"storageId": sid, "uploadId": upload_id, "parts": parts}) == sid
        meta = await value(c, "query", "files:metadata", {"id": sid})
        assert meta["size"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["contentType"] == "video/mp4"
        r = await c.get(f"/api/storage/{sid}", headers={"range": "bytes=0-9"}, follow_redirects=True)
        assert r.status_code == 206 and r.content == data[:10]
        r = await c.get(f"/api/storage/{sid}", follow_redirects=True)  # served: a redirect to the bucket
        assert r.status_code == 200 and r.history[0].status_code == 302 and r.content == data
        assert "no multipart upload" in await error(c, "action", "files:complete_multipart",
                                                     {"storageId": sid, "uploadId": upload_id, "parts": parts})

        aborted = await value(c, "action", "files:start_multipart", {"parts": 1})
        await value(c, "action", "files:abort_multipart",
                    {"storageId": aborted["storageId"], "uploadId": aborted["uploadId"]})
        assert storage_backend.objects() == {sid}
        assert await pending_rows(namespace) == 0


# -- a large upload in bounded memory --------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


async def test_a_200_mb_upload_streams_in_bounded_memory(files_server, storage_backend: Backend) -> None:
    server = files_server("serve")
    size = 200 * MB
    pattern = hashlib.sha256(b"seed").digest() * (MB // 32)  # 1 MiB, not compressible into nothing
    expected = hashlib.sha256()
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as c:
        await upload(c, b"warm up")  # the upload path's imports and buffers, before measuring
        before = _status(server.proc.pid)["VmRSS"]

        async def body() -> AsyncIterator[bytes]:
            for i in range(size // MB):
                chunk = i.to_bytes(4, "big") + pattern[4:]
                expected.update(chunk)
                yield chunk

        url = await value(c, "mutation", "files:upload_url")
        r = await c.post(url, content=body(), headers={"content-type": "video/mp4"})
        assert r.status_code == 200, r.text
        sid = r.json()["storageId"]
        peak = _status(server.proc.pid)["VmHWM"]
        growth = peak - before
        print(f"{storage_backend.name}: a {size // MB} MB upload grew the server's RSS by {growth / MB:.1f} MB")
        # Local disk holds a chunk or two (1 MiB); S3 a part being filled, its joined copy and the
        # parts in flight (8 MiB each, two at a time), and the SDK's buffers: ~45 MB measured.
        bound = size // 8 if storage_backend.name == "local" else size * 2 // 5
        assert growth < bound, f"the server's RSS grew by {growth / MB:.0f} MB for a {size // MB} MB upload"

        meta = await value(c, "query", "files:metadata", {"id": sid})
        assert meta["size"] == size and meta["sha256"] == expected.hexdigest()
        start = 150 * MB + 7
        r = await c.get(f"/api/storage/{sid}", headers={"range": f"bytes={start}-{start + 99}"}, follow_redirects=True)
        assert r.status_code == 206
        assert r.content == ((start // MB).to_bytes(4, "big") + pattern[4:])[7:107]


# -- what a crash leaves behind -------------------------------------------------------------------

async def test_the_sweeper_removes_bytes_a_crash_left_behind(namespace: str, tmp_path: Path) -> None:
    """A process that died mid-upload, or between a delete's commit and the removal of its bytes,
    left a pending row and bytes without a document: the sweeper removes them, and an upload it
    gave up cannot register any more."""
    from server.config import StorageConfig
    from server.core import sql
    from server.core.storage.files import Abandoned, chunks_of

    async with open_runtime(STORAGE_APP, namespace, storage=StorageConfig(local_dir=tmp_path / "blobs")) as runtime:
        files = runtime.files
        crashed_upload, crashed_delete, running = (new_id(STORAGE.number) for _ in range(3))
        async with runtime.db.acquire() as conn:
            for key in (crashed_upload, running):
                await conn.execute(sql.BEGIN_UPLOAD, key)
            await conn.execute(sql.MARK_DELETED, crashed_delete)
        for key in (crashed_upload, crashed_delete, running):
            await files.store.put(key, chunks_of(b"left behind"))
        kept = await files.store_bytes(b"registered", "text/plain")

        assert await files.sweep() == 0  # nothing is old enough yet
        assert await files.sweep(delete_after=0, upload_after=0) == 3
        for key in (crashed_upload, crashed_delete, running):
            assert await files.store.size(key) is None
        assert await files.store.size(kept) == 10
        with pytest.raises(Abandoned):  # the upload still running when it was given up
            await files._write(running, chunks_of(b"finished late"), None, None)
        assert await files.store.size(running) is None
        async with runtime.db.acquire() as conn:
            assert await conn.fetchval(f'SELECT count(*) FROM "{namespace}"._ripple_storage_pending') == 0


@pytest.mark.node
def test_official_npm_client_uploads_and_reads_back(files_server) -> None:
    run_node_tests("storage.test.mjs", files_server())


async def test_the_example_app_creates_a_video_from_an_uploaded_file(files_server, oidc_issuer: OidcIssuer) -> None:
    """On each storage backend: a signed-in creator's upload becomes a video whose file plays back.
    (tests/test_example_app.py covers the rest of the app.)"""
    server = files_server(app_dir=ROOT, CLERK_ISSUER_URL=oidc_issuer.url)
    creator = {"Authorization": f"Bearer {oidc_issuer.token('casey')}"}
    reviewer = {"Authorization": f"Bearer {oidc_issuer.token('riley', role='reviewer')}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=creator) as c:
        url = await value(c, "mutation", "videos:generateUploadUrl")
        r = await c.post(url, content=b"\x00\x00\x00\x18ftypmp42", headers={"content-type": "video/mp4"})
        sid = r.json()["storageId"]
        r = await c.post("/api/mutation", json={"path": "campaigns:create", "args": {"name": "Launch", "brand": "Acme"}},
                         headers=reviewer)
        campaign = r.json()["value"]
        video = await value(c, "mutation", "videos:createVideo", {"campaignId": campaign, "storageId": sid})
        got = await value(c, "query", "videos:get", {"id": video})
        assert got["storageId"] == sid and got["url"] == f"{server.url}/api/storage/{sid}"
        played = await c.get(got["url"], follow_redirects=True)
        assert played.content == b"\x00\x00\x00\x18ftypmp42" and played.headers["content-type"] == "video/mp4"

        r = await call(c, "mutation", "videos:createVideo", {"campaignId": campaign, "storageId": campaign})
        assert r.status_code == 400 and "_storage" in r.text  # a campaign's id is no file
        unknown = new_id(STORAGE.number)  # a storage id, of no file
        r = await call(c, "mutation", "videos:createVideo", {"campaignId": campaign, "storageId": unknown})
        assert r.json()["errorData"]["code"] == "FILE_NOT_FOUND"

        # The processing service fetched the file through its URL on this backend too: its bytes
        # arrived (they are no playable video). The test also ends with no job running: a server
        # stopped during one would wait for the job's callback, retried for 7 s to a server gone.
        deadline = asyncio.get_running_loop().time() + 60
        while (got := await value(c, "query", "videos:get", {"id": video}))["status"] in ("uploaded", "processing"):
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.05)
        assert got["status"] == "failed" and got["failureReason"].startswith("the file is not a playable video: "), got


async def test_an_unreachable_s3_endpoint_answers_503_and_the_server_keeps_serving(
        start_server: Callable[..., ServerProcess], namespace: str) -> None:
    """Nothing listens at the endpoint: the upload fails after the SDK's retries (one here) with a
    503 that names no internal detail, nothing is registered, and everything else keeps working."""
    env = {"RIPPLE_STORAGE": "s3", "RIPPLE_S3_ENDPOINT": f"127.0.0.1:{free_port()}", "RIPPLE_S3_BUCKET": "gone",
           "RIPPLE_S3_ACCESS_KEY": "k", "RIPPLE_S3_SECRET_KEY": "s", "RIPPLE_S3_SECURE": "false",
           "RIPPLE_S3_RETRIES": "1"}
    server = start_server("serve", STORAGE_APP, extra_env=env)  # starts: the bucket is checked at first use
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
        url = await value(c, "mutation", "files:upload_url")
        r = await c.post(url, content=b"x" * 1000, headers={"content-type": "text/plain"})
        assert r.status_code == 503 and r.json()["code"] == "StorageUnavailable", r.text
        assert "127.0.0.1" not in r.text  # the endpoint is in the server log, not the answer
        assert await value(c, "query", "files:all") == []
        assert (await c.get("/_ripple/health")).status_code == 200
    assert "StorageUnavailable" not in server.log() and "nothing was stored" in server.log()


async def test_a_page_on_another_origin_uploads_and_reads_ranges(files_server, storage_backend: Backend) -> None:
    """What a browser does across origins: a preflight for the POST (its Content-Type is not a
    simple one), the upload, then a ranged GET whose ETag and Content-Range the page may read."""
    server = files_server()
    origin = {"origin": "https://app.example.com"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        url = await value(c, "mutation", "files:upload_url")
        r = await c.options(url, headers={**origin, "access-control-request-method": "POST",
                                          "access-control-request-headers": "content-type"})
        assert r.status_code in (200, 204) and "POST" in r.headers["access-control-allow-methods"]
        assert "content-type" in r.headers["access-control-allow-headers"].lower()
        r = await c.post(url, content=b"0123456789", headers={**origin, "content-type": "video/mp4"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        sid = r.json()["storageId"]
        r = await c.get(f"/api/storage/{sid}", headers={**origin, "range": "bytes=2-4"})
        assert r.headers["access-control-allow-origin"] == "*"
        if storage_backend.name == "s3":  # the bucket serves the bytes (its own CORS rules apply)
            assert r.status_code == 302
            return
        assert r.status_code == 206 and r.content == b"234"
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"etag", "content-range"} <= exposed


async def test_flags_choose_the_store(start_server: Callable[..., ServerProcess], s3_server: S3Server,
                                      tmp_path: Path) -> None:
    """`ripple serve --storage s3 --s3-endpoint ... --s3-bucket ...` (keys from the environment)
    stores in that bucket, whatever RIPPLE_STORAGE says; --public-url is the URLs' base."""
    bucket = "t-" + secrets.token_hex(6)
    keys = {"RIPPLE_S3_ACCESS_KEY": s3_server.access_key, "RIPPLE_S3_SECRET_KEY": s3_server.secret_key,
            "RIPPLE_S3_SECURE": "false", "RIPPLE_STORAGE": "local", "RIPPLE_STORAGE_DIR": str(tmp_path / "unused")}
    server = start_server("serve", STORAGE_APP, extra_env=keys, args=[
        "--storage", "s3", "--s3-endpoint", s3_server.endpoint, "--s3-bucket", bucket,
        "--public-url", "https://files.example.com"])
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        url = await value(c, "mutation", "files:upload_url")
        assert url.startswith("https://files.example.com/api/storage/upload?token=")
        r = await c.post(url.replace("https://files.example.com", server.url), content=b"flagged")
        sid = r.json()["storageId"]
    assert [o.object_name for o in s3_server.client().list_objects(bucket)] == [sid]
    assert not (tmp_path / "unused").exists()
