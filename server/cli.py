"""`ripple dev`, `ripple serve`, `ripple run`."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from server import devserver
from server.config import Config

DISTRIBUTION = "ripple-backend"  # the name on PyPI; the command and the packages are `ripple`, `server`
DEFAULT_URL = "http://127.0.0.1:3210"


def version() -> str:
    try:
        return f"{DISTRIBUTION} {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return f"{DISTRIBUTION} (version unknown: the distribution is not installed; pip install -e . installs it)"


def _common(p: argparse.ArgumentParser, default_port: int | None) -> None:
    p.add_argument("--port", type=int, default=default_port, help="port to listen on (default 3210)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--dir", type=Path, default=None, help="app directory holding schema.py and functions/ (default: current directory)")
    p.add_argument("--database-url", default=None, help="PostgreSQL URL (default: $DATABASE_URL)")
    p.add_argument("--db-schema", default=None, help="PostgreSQL schema holding Ripple's tables (default: ripple, or $RIPPLE_DB_SCHEMA)")
    p.add_argument("--http-action-max-body-bytes", type=int, default=None,
                   help="largest request body an HTTP action may read (default: 20 MiB, or $RIPPLE_HTTP_ACTION_MAX_BODY_BYTES)")
    storage = p.add_argument_group("file storage (docs/operations.md; S3 keys only from the environment)")
    storage.add_argument("--storage", choices=("local", "s3"), default=None,
                         help="where stored files live (default: local, or $RIPPLE_STORAGE)")
    storage.add_argument("--storage-dir", type=Path, default=None,
                         help="local disk: the directory (default: <dir>/.ripple/storage, or $RIPPLE_STORAGE_DIR)")
    storage.add_argument("--s3-endpoint", default=None, help="S3: host[:port] or URL (default: $RIPPLE_S3_ENDPOINT)")
    storage.add_argument("--s3-bucket", default=None, help="S3: the bucket, created when missing (default: ripple, or $RIPPLE_S3_BUCKET)")
    storage.add_argument("--s3-region", default=None, help="S3: the region (default: $RIPPLE_S3_REGION, else us-east-1)")
    storage.add_argument("--public-url", default=None,
                         help="base of the upload and file URLs functions hand out (default: http://<host>:<port>, or $RIPPLE_PUBLIC_URL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ripple", description="Ripple: a reactive backend that speaks the Convex protocol")
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the app in development mode (embedded PostgreSQL unless a database URL is set)")
    _common(dev, 3210)
    srv = sub.add_parser("serve", help="run the app in production mode (database URL required)")
    _common(srv, 3210)
    run = sub.add_parser("run", help="call a function on a running server, e.g. ripple run videos:list '{}'")
    run.add_argument("path", help="function path, e.g. videos:list")
    run.add_argument("args", nargs="?", default="{}", help="JSON object of arguments (default {})")
    run.add_argument("--url", default=None, help=f"server URL (default: $RIPPLE_URL, else the `ripple dev` running in --dir, else {DEFAULT_URL})")
    run.add_argument("--admin-key", default=None, help="admin key (default: $RIPPLE_ADMIN_KEY, else .ripple/admin_key of --dir)")
    run.add_argument("--dir", type=Path, default=Path.cwd(), help="app directory to find the dev server and its admin key in (default: current directory)")
    return parser


def _config(args: argparse.Namespace, dev: bool) -> Config:
    app_dir = (args.dir or Path.cwd()).resolve()
    try:
        config = Config.from_env(
            app_dir=app_dir, dev=dev, host=args.host, port=args.port,
            database_url=args.database_url, db_schema=args.db_schema,
            http_action_max_body_bytes=args.http_action_max_body_bytes,
        )
    except ValueError as exc:  # a setting that cannot be read
        sys.exit(f"ripple {'dev' if dev else 'serve'}: {exc}")
    flags = {"backend": args.storage, "local_dir": args.storage_dir, "s3_endpoint": args.s3_endpoint,
             "s3_bucket": args.s3_bucket, "s3_region": args.s3_region, "public_url": args.public_url}
    for name, value in flags.items():  # a flag wins over its environment variable
        if value is not None:
            setattr(config.storage, name, value)
    return config


def _listen(config: Config, command: str) -> socket.socket:
    """Bind the port first: a port in use fails before anything starts or claims to serve."""
    from server.runner import listen

    try:
        return listen(config.host, config.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            sys.exit(f"ripple {command}: port {config.port} on {config.host} is already in use "
                     "(another server is listening there); choose another with --port")
        sys.exit(f"ripple {command}: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")


def cmd_dev(args: argparse.Namespace) -> None:
    from server.embedded import start_embedded_postgres
    from server.runner import dev_admin_key, serve

    config = _config(args, dev=True)
    if not (config.app_dir / "functions").is_dir() and not (config.app_dir / "schema.py").exists():
        sys.exit(f"ripple dev: {config.app_dir} has no schema.py or functions/; run it in your app directory or pass --dir")
    if config.admin_key is None:
        config.admin_key = dev_admin_key(config.app_dir)
    sock = _listen(config, "dev")
    if not config.database_url:
        print("Starting embedded PostgreSQL under .ripple/ ...", flush=True)
        config.database_url = start_embedded_postgres(config.app_dir)
        # The embedded server is stopped at interpreter exit. After a graceful shutdown uvicorn
        # re-raises the signal that stopped it; SIGTERM's default action would then kill the
        # process before exit handlers run, leaving PostgreSQL behind. Exit through SystemExit.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    serve(config, sock)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> None:
    from server.runner import serve

    config = _config(args, dev=False)
    if not config.database_url:
        sys.exit("ripple serve: a database URL is required (--database-url or DATABASE_URL)")
    serve(config, _listen(config, "serve"))


def server_url(args: argparse.Namespace) -> tuple[str, str]:
    """The server `ripple run` calls, and where that choice comes from: --url, else $RIPPLE_URL,
    else the `ripple dev` serving --dir (its record in .ripple/), else the default."""
    if args.url:
        return args.url, "from --url"
    if os.environ.get("RIPPLE_URL"):
        return os.environ["RIPPLE_URL"], "from RIPPLE_URL"
    recorded = devserver.recorded_url(args.dir)
    if recorded is not None:
        return recorded, f"the ripple dev recorded in {args.dir / devserver.RECORD}"
    return DEFAULT_URL, "the default; no ripple dev is recorded as running in " + str(args.dir)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        fn_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        print(f"ripple run: arguments are not valid JSON: {exc}", file=sys.stderr)
        return 2
    key = args.admin_key or os.environ.get("RIPPLE_ADMIN_KEY")
    key_file = args.dir / ".ripple" / "admin_key"
    if key is None and key_file.exists():
        key = key_file.read_text().strip()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Convex {key}"
    url, source = server_url(args)
    body = json.dumps({"path": args.path, "args": fn_args, "format": "json"}).encode()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"ripple run: the server URL {url!r} ({source}) is not an http:// URL, such as {DEFAULT_URL}", file=sys.stderr)
        return 2
    request = urllib.request.Request(f"{url.rstrip('/')}/api/function", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=660) as response:
            result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        payload = exc.read().decode(errors="replace")
        try:
            payload = json.loads(payload)["message"]
        except (ValueError, KeyError, TypeError):
            pass
        print(f"ripple run: {exc.code}: {payload}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"ripple run: no Ripple server at {url} ({source}): {exc.reason}; start one with `ripple dev`, "
              "or choose the server with --url or RIPPLE_URL", file=sys.stderr)
        return 1
    for line in result.get("logLines", []):
        print(line, file=sys.stderr)
    if result.get("status") == "success":
        print(json.dumps(_as_js(result["value"]), indent=2))
        return 0
    print(result.get("errorMessage", "function failed"), file=sys.stderr)
    if "errorData" in result:
        print(json.dumps(_as_js(result["errorData"]), indent=2), file=sys.stderr)
    return 1


def _as_js(value: Any) -> Any:
    """A result shown as JavaScript shows it: the wire writes every number as a float (`2.0`),
    a person reads `2`."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, list):
        return [_as_js(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_js(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command == "dev":
        cmd_dev(args)
    elif args.command == "serve":
        cmd_serve(args)
    else:
        sys.exit(cmd_run(args))


if __name__ == "__main__":
    main()
