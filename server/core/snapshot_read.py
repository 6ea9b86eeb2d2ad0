"""What an import reads (docs/import-export.md): a snapshot ZIP in Convex's layout, or one
table's JSONL, JSON or CSV file, as a `Plan` of per-table `Source`s whose lines are read again on
each pass (server/core/snapshot.py reads them twice: ids first, then documents). Nothing here
touches the database; a file that cannot be read is refused with its name, line and field."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from server.core.database import Catalog
from server.core.system_tables import STORAGE
from server.errors import RippleUsageError

FORMATS = ("jsonl", "json", "csv")
_DOCUMENTS = re.compile(r"^([^/]+)/documents\.jsonl$")
_GENERATED_SCHEMA = "{}/generated_schema.jsonl"


class ImportRefused(RippleUsageError):
    """An import that changed nothing, and why (the file, line and field when a document is bad)."""


@dataclass
class Source:
    """The documents of one table: `(where, raw JSON object)` pairs, read again on each pass."""

    table: str
    lines: Callable[[], Iterator[tuple[str, dict[str, Any]]]]
    uniform: bool = False  # values in Convex's uniform export encoding (server/core/export_json.py)


@dataclass
class Plan:
    tables: list[Source]
    storage: Source | None = None
    blobs: dict[str, str] = field(default_factory=dict)  # old storage id -> zip entry
    archive: zipfile.ZipFile | None = None


def _jsonl(name: str, lines: Iterable[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{name} line {number}"
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ImportRefused(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ImportRefused(f"{where}: a document must be a JSON object, not {type(value).__name__}")
        yield where, value


def _zip_lines(archive: zipfile.ZipFile, entry: str) -> Callable[[], Iterator[tuple[str, dict[str, Any]]]]:
    def lines() -> Iterator[tuple[str, dict[str, Any]]]:
        with archive.open(entry) as f:
            yield from _jsonl(entry, f)

    return lines


def snapshot_plan(archive: zipfile.ZipFile, catalog: Catalog) -> Plan:
    """What a snapshot ZIP holds; refused when it names a table the schema lacks."""
    plan = Plan(tables=[], archive=archive)
    for name in archive.namelist():
        match = _DOCUMENTS.match(name)
        if match is None:
            if name.startswith("_storage/") and name != "_storage/documents.jsonl":
                plan.blobs[name.split("/", 1)[1].split(".", 1)[0]] = name
            continue
        table = match.group(1)
        source = Source(table, _zip_lines(archive, name), _uniform(archive, table))
        if table == STORAGE.name:
            plan.storage = source
        elif not table.startswith("_"):  # _tables: numbers are this deployment's; other system tables are not data
            if table not in catalog.by_name:
                raise ImportRefused(f"{name}: table {table!r} is not in the schema (known tables: "
                                    f"{', '.join(sorted(n for n in catalog.by_name if not n.startswith('_'))) or 'none'})")
            plan.tables.append(source)
    return plan


def _uniform(archive: zipfile.ZipFile, table: str) -> bool:
    """Whether the table's generated_schema.jsonl marks its values as Convex's uniform encoding
    (any other content: an older Convex export's inferred types, not read; values as encoded JSON)."""
    try:
        with archive.open(_GENERATED_SCHEMA.format(table)) as f:
            first = f.readline()
    except KeyError:
        return False
    try:
        return bool(orjson.loads(first) == "uniform")
    except orjson.JSONDecodeError:
        return False


def _csv_cell(text: str) -> Any:
    """A CSV cell as Convex's CSV import reads it: numbers as float64, true/false as booleans,
    anything else a string."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def table_plan(table: str, fmt: str, data: IO[bytes], catalog: Catalog, name: str | None = None) -> Plan:
    """One table's documents from a JSONL, JSON (an array of objects) or CSV (a header row) file;
    `name`: the file's, for error messages."""
    if fmt not in FORMATS:
        raise ImportRefused(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if table.startswith("_") or table not in catalog.by_name:
        raise ImportRefused(f"table {table!r} is not a table of the schema")
    name = name or f"{table}.{fmt}"

    def lines() -> Iterator[tuple[str, dict[str, Any]]]:
        data.seek(0)
        if fmt == "jsonl":
            yield from _jsonl(name, data)
        elif fmt == "json":
            try:
                docs = orjson.loads(data.read())
            except orjson.JSONDecodeError as exc:
                raise ImportRefused(f"{name}: not valid JSON ({exc})") from None
            if not isinstance(docs, list):
                raise ImportRefused(f"{name}: a JSON import is an array of objects")
            for number, doc in enumerate(docs, start=1):
                if not isinstance(doc, dict):
                    raise ImportRefused(f"{name} element {number}: a document must be a JSON object")
                yield f"{name} element {number}", doc
        else:
            text = io.TextIOWrapper(data, encoding="utf-8", newline="")
            try:
                reader = csv.DictReader(text)
                for row in reader:
                    yield f"{name} line {reader.line_num}", {k: _csv_cell(v) for k, v in row.items() if v != ""}
            finally:
                text.detach()  # `data` stays open: the next pass reads it again

    return Plan(tables=[Source(table, lines)])
