"""Which blob store a server uses, from StorageConfig (docs/operations.md, File storage)."""

from __future__ import annotations

from pathlib import Path

from server.config import StorageConfig
from server.core.storage.blobs import BlobStore, LocalDisk

DEFAULT_REGION = "us-east-1"  # AWS buckets elsewhere need RIPPLE_S3_REGION


def open_store(config: StorageConfig, app_dir: Path, part_bytes: int | None = None) -> BlobStore:
    """LocalDisk under `config.local_dir` (default `<app_dir>/.ripple/storage`), or S3Store on
    `config.s3_endpoint` (parts of `part_bytes`, default s3.PART_BYTES). Settings missing or
    malformed raise ValueError naming the variable; the endpoint itself is first contacted by the
    store's first call (S3Store.ready)."""
    if config.backend == "local":
        return LocalDisk(config.local_dir or app_dir / ".ripple" / "storage")
    if config.backend != "s3":
        raise ValueError(f"RIPPLE_STORAGE must be 'local' or 's3', not {config.backend!r}")
    # Imported only for S3: the minio SDK (with urllib3 and its crypto) takes a tenth of a second,
    # a server started on local disk, the default, need not wait for it.
    import urllib3
    from minio import Minio

    from server.core.storage.s3 import PART_BYTES, S3Store

    endpoint, secure = _endpoint(config.s3_endpoint, config.s3_secure)
    missing = [name for name, value in (("RIPPLE_S3_ACCESS_KEY", config.s3_access_key),
                                        ("RIPPLE_S3_SECRET_KEY", config.s3_secret_key)) if not value]
    if missing:
        raise ValueError(f"RIPPLE_STORAGE=s3 needs {' and '.join(missing)} (presigned URLs are signed with them)")
    if not config.s3_bucket:
        raise ValueError("RIPPLE_S3_BUCKET is empty: name the bucket stored files go to")
    # Given a region, the SDK never asks the endpoint for the bucket's (a blocking request it
    # would make while presigning, on the event loop); us-east-1 is what MinIO and R2 accept.
    client = Minio(endpoint, access_key=config.s3_access_key, secret_key=config.s3_secret_key,
                   secure=secure, region=config.s3_region or DEFAULT_REGION)
    # The SDK's HTTP client tries each call 5 more times, with its fixed backoff; RIPPLE_S3_RETRIES
    # sets how many. Set on the SDK's own client, before its first request makes a connection
    # pool, rather than on one of ours, which would have to copy its timeouts and CA bundle.
    client._http.connection_pool_kw["retries"] = urllib3.Retry(
        total=config.s3_retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
    return S3Store(client, config.s3_bucket, endpoint, part_bytes or PART_BYTES)


def _endpoint(value: str, secure: bool) -> tuple[str, bool]:
    """host[:port] and whether to use TLS; a URL's scheme decides TLS itself."""
    if not value:
        raise ValueError("RIPPLE_STORAGE=s3 needs RIPPLE_S3_ENDPOINT: host[:port] of the S3 service "
                         "(s3.amazonaws.com, localhost:9000, <account>.r2.cloudflarestorage.com)")
    for scheme, tls in (("https://", True), ("http://", False)):
        if value.startswith(scheme):
            value, secure = value[len(scheme):], tls
    value = value.rstrip("/")
    if not value or "/" in value:
        raise ValueError(f"RIPPLE_S3_ENDPOINT must be host[:port] (or a URL with no path), not {value!r}")
    return value, secure
