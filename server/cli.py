"""`ripple dev`, `ripple serve`, `ripple run`, `ripple env`, `ripple init`, `ripple codegen`,
`ripple export`, `ripple import`, `ripple data`, `ripple logs`, `ripple dashboard`."""

from __future__ import annotations

import argparse
import base64
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

from server import adminkey, cli_logs, cli_watch, devserver, portable_cli, scaffold, workers
from server.config import Config
from server.errors import RippleError

DISTRIBUTION = "ripple-backend"  # the name on PyPI; the command and the packages are `ripple`, `server`
DEFAULT_URL = portable_cli.DEFAULT_URL


def version() -> str:
    try:
        return f"{DISTRIBUTION} {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return f"{DISTRIBUTION} (version unknown: the distribution is not installed; pip install -e . installs it)"


def _common(p: argparse.ArgumentParser, default_port: int | None) -> None:
    p.add_argument("--port", type=int, default=default_port, metavar="N",
                   help="port to listen on (default 3210; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--dir", type=Path, default=None, help="app directory holding schema.py and functions/ (default: current directory)")
    p.add_argument("--database-url", default=None, metavar="URL", help="PostgreSQL URL (default: $DATABASE_URL; "
                   "ripple dev without one: an embedded PostgreSQL under <dir>/.ripple/)")
    p.add_argument("--db-schema", default=None, metavar="NAME",
                   help="PostgreSQL schema holding Ripple's tables (default: $RIPPLE_DB_SCHEMA, else ripple)")
    p.add_argument("--admin-key", default=None, metavar="KEY", help="the admin key (default: $RIPPLE_ADMIN_KEY, which keeps "
                   "it out of the process list; ripple dev: else <dir>/.ripple/admin_key, made at its first start; "
                   "ripple serve: else none, and admin requests are refused)")
    p.add_argument("--http-action-max-body-bytes", type=int, default=None, metavar="BYTES",
                   help="largest request body an HTTP action may read (default: 20 MiB, or $RIPPLE_HTTP_ACTION_MAX_BODY_BYTES)")
    storage = p.add_argument_group("file storage (docs/operations.md; S3 keys only from the environment)")
    storage.add_argument("--storage", choices=("local", "s3"), default=None,
                         help="where stored files live (default: $RIPPLE_STORAGE, else local)")
    storage.add_argument("--storage-dir", type=Path, default=None, metavar="DIR",
                         help="local disk: the directory (default: $RIPPLE_STORAGE_DIR, else <dir>/.ripple/storage)")
    storage.add_argument("--s3-endpoint", default=None, metavar="HOST[:PORT]",
                         help="S3: the service, host[:port] or URL (default: $RIPPLE_S3_ENDPOINT)")
    storage.add_argument("--s3-bucket", default=None, metavar="NAME",
                         help="S3: the bucket, created when missing (default: $RIPPLE_S3_BUCKET, else ripple)")
    storage.add_argument("--s3-region", default=None, metavar="REGION",
                         help="S3: the region (default: $RIPPLE_S3_REGION, else us-east-1)")
    storage.add_argument("--public-url", default=None, metavar="URL", help="the server's public URL: base of the upload and "
                         "file URLs functions hand out (default: $RIPPLE_PUBLIC_URL, else http://<host>:<port>)")


class _Help(argparse.HelpFormatter):
    """argparse measures command names without the indent it lists them with, so the longest
    (`dashboard`) would push its summary to the next line: leave room for that indent."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ripple", description="Ripple: a reactive backend that speaks the Convex protocol",
                                     epilog="`ripple COMMAND --help` shows a command's options; docs/cli.md describes them all.",
                                     formatter_class=_Help)
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = _command(sub, "dev", "run the app in development mode (embedded PostgreSQL unless a database URL is set)")
    _common(dev, 3210)
    dev.add_argument("--codegen", action="store_true",
                     help="write <dir>/_generated (as `ripple codegen` does) at start and after each successful reload")
    srv = _command(sub, "serve", "run the app in production mode (database URL required)")
    _common(srv, 3210)
    srv.add_argument("--workers", type=int, default=None, metavar="N",
                     help="run N worker processes on the port, each a full server (default: $RIPPLE_WORKERS, else the number of "
                          "CPU cores this process may use; "
                          "docs/operations.md, Workers)")
    run = _command(sub, "run", "call a function on a running server, e.g. ripple run videos:list '{}'")
    run.add_argument("path", metavar="PATH", help="function path, e.g. videos:list")
    run.add_argument("args", nargs="?", default="{}", metavar="ARGS", help="JSON object of arguments (default {})")
    run.add_argument("--identity", default=None, metavar="JSON",
                     help='run as this user, e.g. \'{"subject": "u1", "name": "Uma", "role": "reviewer"}\' (needs the '
                          "admin key; a UserIdentity as ctx.auth.get_user_identity() returns it: tokenIdentifier, or issuer "
                          "and subject; under ripple dev the issuer defaults to its development issuer)")
    run.add_argument("--watch", action="store_true",
                     help="subscribe to the query and print its result again each time it changes (until Ctrl-C)")
    _client(run)
    init = _command(sub, "init", "write a new app (schema.py, functions/, README.md, .gitignore) into DIR")
    init.add_argument("dir", nargs="?", default=".", metavar="DIR", help="where (default: this directory; made if missing)")
    env = _command(sub, "env", "set, get, list or remove the environment variables functions read (ctx.env)")
    verbs = env.add_subparsers(dest="verb", required=True, metavar="VERB")
    env_set = _command(verbs, "set", "set a variable: ripple env set NAME VALUE (without VALUE: read from stdin, "
                               "keeping secrets out of shell history)")
    env_set.add_argument("name", metavar="NAME", help="the variable, e.g. SERVICE_URL")
    env_set.add_argument("value", nargs="?", default=None, metavar="VALUE",
                         help="its value (default: read from stdin; a prompt without echo on a terminal)")
    _command(verbs, "get", "print a variable's value").add_argument("name", metavar="NAME", help="the variable")
    _command(verbs, "list", "print every variable as NAME=value, sorted by name")
    _command(verbs, "remove", "remove a variable").add_argument("name", metavar="NAME", help="the variable")
    for verb in verbs.choices.values():
        _client(verb)
    gen = _command(sub, "codegen", "write TypeScript types of the app's functions and schema for a frontend (docs/codegen.md)")
    gen.add_argument("--dir", type=Path, default=Path.cwd(), help="app directory holding schema.py and functions/ (default: current directory)")
    gen.add_argument("--out", type=Path, default=None, metavar="DIR", help="where to write api.js, api.d.ts, dataModel.d.ts (default: <dir>/_generated)")
    exp = _command(sub, "export", "write a snapshot ZIP of the tables and files (Convex's export layout)")
    exp.add_argument("--path", type=Path, required=True, metavar="FILE",
                     help="the ZIP file to write, e.g. snapshot.zip (written as FILE.partial, renamed when complete)")
    _client(exp)
    dat = _command(sub, "data", "list the tables, or print a page of a table's documents (newest first)")
    dat.add_argument("table", nargs="?", default=None, metavar="TABLE", help="the table (without it: list the tables)")
    dat.add_argument("--limit", type=int, default=100, metavar="N", help="documents to print, 1 to 1000 (default 100)")
    dat.add_argument("--order", choices=("asc", "desc"), default="desc", help="by creation time (default desc: newest first)")
    _client(dat)
    imp = _command(sub, "import", "import a snapshot ZIP, or one table's JSONL, JSON or CSV (--table), all or nothing")
    imp.add_argument("path", type=Path, metavar="FILE", help="snapshot.zip, or with --table a .jsonl, .json or .csv file")
    imp.add_argument("--table", default=None, metavar="NAME", help="import the file into this one table")
    imp.add_argument("--format", choices=("jsonl", "json", "csv"), default=None, help="the file's format (default: its extension)")
    mode = imp.add_mutually_exclusive_group()  # neither: every table the import writes must be empty
    mode.add_argument("--replace", action="store_const", dest="mode", const="replace",
                      help="delete the documents of the imported tables first, in the same transaction "
                           "(default: each table imported into must be empty)")
    mode.add_argument("--append", action="store_const", dest="mode", const="append",
                      help="add to the documents already there (an _id already present refuses the import)")
    _client(imp)
    logs = _command(sub, "logs", "print the functions' log lines and failures as they happen (until Ctrl-C), like npx convex logs")
    logs.add_argument("--history", type=int, nargs="?", const=-1, default=0, metavar="N",
                      help="first print the last N executions the server keeps (without N: all of them)")
    logs.add_argument("--success", action="store_true",
                      help="also print a line for each successful execution (by default only log lines and failures)")
    logs.add_argument("--jsonl", action="store_true", help="print every entry as it comes, one JSON object a line")
    _client(logs)
    board = _command(sub, "dashboard", "open the dashboard (/_ripple/) in a browser, signed in with the admin key")
    board.add_argument("--no-open", action="store_true", help="print the signed-in address instead of opening a browser")
    _client(board)
    return parser


def _command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str) -> argparse.ArgumentParser:
    """A (sub)command whose one-line summary is both what `ripple --help` lists and the
    description its own --help starts with."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
    return parser


def _client(p: argparse.ArgumentParser) -> None:
    """Options of the commands that talk to a running server."""
    p.add_argument("--url", default=None, help=f"server URL (default: $RIPPLE_URL, else the `ripple dev` recorded as "
                   f"running in --dir, else {DEFAULT_URL})")
    p.add_argument("--admin-key", default=None, metavar="KEY",
                   help="admin key (default: $RIPPLE_ADMIN_KEY, else the file .ripple/admin_key in --dir)")
    p.add_argument("--dir", type=Path, default=Path.cwd(), help="app directory to find the `ripple dev` and its admin key in "
                   "(default: current directory)")


def _config(args: argparse.Namespace, dev: bool) -> Config:
    app_dir = (args.dir or Path.cwd()).resolve()
    try:
        config = Config.from_env(
            app_dir=app_dir, dev=dev, host=args.host, port=args.port,
            database_url=args.database_url, db_schema=args.db_schema, admin_key=args.admin_key,
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
    from server.runner import serve

    config = _config(args, dev=True)
    if args.codegen:
        from server.codegen import GENERATED_DIR

        config.codegen_dir = config.app_dir / GENERATED_DIR
    if not (config.app_dir / "functions").is_dir() and not (config.app_dir / "schema.py").exists():
        sys.exit(f"ripple dev: {config.app_dir} has no schema.py or functions/; run it in your app directory or pass --dir")
    sock = _listen(config, "dev")  # first: a start that cannot serve prints and makes nothing
    if config.admin_key is None:
        config.admin_key, created = adminkey.dev_key(config.app_dir)
        where = config.app_dir / adminkey.KEY_FILE
        if created:  # shown this once; afterwards only where it is
            print(f"Admin key (saved in {where}, readable by you only; shown only now): {config.admin_key}", flush=True)
        else:
            print(f"Admin key: in {where} (ripple run and ripple env read it from there)", flush=True)
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
    config = _config(args, dev=False)
    if not config.database_url:
        sys.exit("ripple serve: a database URL is required (--database-url or DATABASE_URL)")
    count = args.workers if args.workers is not None else int(os.environ.get("RIPPLE_WORKERS") or workers.core_count())
    if count < 1:
        sys.exit(f"ripple serve: --workers must be at least 1, not {count}")
    if count > 1:  # a supervisor of `count` ordinary `ripple serve` processes on one port
        if "RIPPLE_POOL_MAX" not in os.environ:  # the group holds about as many connections as one process would
            os.environ["RIPPLE_POOL_MAX"] = str(workers.pool_share(config.pool_max, count))
        with _listen(config, "serve") as sock:
            sys.exit(workers.Supervisor([sys.executable, "-m", "server.cli", *args.argv], count, sock).run())
    from server.runner import serve

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


def client_admin_key(args: argparse.Namespace) -> str | None:
    """The admin key `ripple run` and `ripple env` send: --admin-key, else $RIPPLE_ADMIN_KEY,
    else the one `ripple dev` made in --dir."""
    key = args.admin_key or os.environ.get("RIPPLE_ADMIN_KEY") or None  # an empty variable counts as unset
    key_file = args.dir / adminkey.KEY_FILE
    if key is None and key_file.exists():
        key = key_file.read_text().strip()
    return key


def cmd_run(args: argparse.Namespace) -> int:
    try:
        fn_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        print(f"ripple run: arguments are not valid JSON: {exc}", file=sys.stderr)
        return 2
    key = client_admin_key(args)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Convex {key}"
    if args.identity is not None:
        try:
            identity = json.loads(args.identity)
        except json.JSONDecodeError as exc:
            print(f"ripple run: --identity is not valid JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(identity, dict):
            print('ripple run: --identity must be a JSON object, such as \'{"subject": "u1"}\'', file=sys.stderr)
            return 2
        if not key:
            print(f"ripple run: --identity needs the admin key (acting as a user is an admin's privilege): pass "
                  f"--admin-key, set RIPPLE_ADMIN_KEY, or run in the app directory of a `ripple dev` ({adminkey.KEY_FILE})",
                  file=sys.stderr)
            return 2
        # As Convex's dashboard and `npx convex run --identity` send it: the admin key, then the
        # identity to act as, base64 of its JSON (server/api/http_api.py, admin_caller).
        headers["Authorization"] += ":" + base64.b64encode(json.dumps(identity).encode()).decode()
    url, source = server_url(args)
    body = json.dumps({"path": args.path, "args": fn_args, "format": "json"}).encode()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"ripple run: the server URL {url!r} ({source}) is not an http:// URL, such as {DEFAULT_URL}", file=sys.stderr)
        return 2
    if args.watch:
        acting_as = None if args.identity is None else json.loads(args.identity)
        return cli_watch.watch(url, source, args.path, fn_args, key, acting_as)
    request = urllib.request.Request(f"{url.rstrip('/')}/api/function", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=660) as response:
            result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"ripple run: {exc.code}: {portable_cli.error_message(exc)}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"ripple run: no Ripple server at {url} ({source}): {exc.reason}; start one with `ripple dev`, "
              "or choose the server with --url or RIPPLE_URL", file=sys.stderr)
        return 1
    for line in result.get("logLines", []):
        print(line, file=sys.stderr)
    if result.get("status") == "success":
        print(json.dumps(cli_watch.as_js(result["value"]), indent=2))
        return 0
    print(result.get("errorMessage", "function failed"), file=sys.stderr)
    if "errorData" in result:
        print(json.dumps(cli_watch.as_js(result["errorData"]), indent=2), file=sys.stderr)
    return 1


def cmd_codegen(args: argparse.Namespace) -> int:
    from server.codegen import generate

    try:
        print(generate(args.dir.resolve(), args.out), file=sys.stderr)
    except RippleError as exc:
        print(f"ripple codegen: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a worker of `serve --workers` is started with
    if args.command in ("dev", "serve"):
        try:
            (cmd_dev if args.command == "dev" else cmd_serve)(args)
        except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down gracefully, then passed the signal on
            sys.exit(128 + signal.SIGINT)
    elif args.command == "env":
        sys.exit(portable_cli.env(*server_url(args), client_admin_key(args), args.verb, getattr(args, "name", None),
                                  getattr(args, "value", None)))
    elif args.command == "init":
        sys.exit(scaffold.init_command(Path(args.dir)))
    elif args.command == "codegen":
        sys.exit(cmd_codegen(args))
    elif args.command == "export":
        sys.exit(portable_cli.export(*server_url(args), client_admin_key(args), args.path))
    elif args.command == "data":
        sys.exit(portable_cli.data(*server_url(args), client_admin_key(args), args.table, args.limit, args.order))
    elif args.command == "logs":
        show = cli_logs.Show(success=args.success, jsonl=args.jsonl, color=cli_logs.use_color(sys.stdout))
        sys.exit(cli_logs.follow(*server_url(args), client_admin_key(args), show, None if args.history < 0 else args.history))
    elif args.command == "dashboard":
        sys.exit(portable_cli.dashboard(*server_url(args), client_admin_key(args), not args.no_open))
    elif args.command == "import":
        sys.exit(portable_cli.import_(*server_url(args), client_admin_key(args), args.path, args.table, args.format,
                                      args.mode or "empty"))
    else:
        sys.exit(cmd_run(args))


if __name__ == "__main__":
    main()
