"""Vector indexes: what each document keeps in its row for `ctx.vector_search`
(search/vector_query.py runs the searches).

A document of a table with a vector index `NAME` keeps:
- `v_NAME`: its vector scaled to length 1 (cosine similarity is then a dot product), as pgvector's
  `vector(<dimensions>)` when the database has pgvector, else as `float8[]`; NULL when the
  document is not in the index;
- `f_NAME` (text[]): one token per filter field, "<position>:<hash of the value>" (the lexeme
  search/text.py's `filter_lexeme` makes), with a GIN index: `f_NAME && $tokens` selects the
  documents equal to any of a search's `eq` terms.

Which documents are in the index is Convex's rule (crates/vector/src/qdrant_index.rs,
`QdrantSchema::index`; its docs: "Only documents that contain a vector of the size and in the
field specified by a vector index will be included"): those whose vector field holds a list of
exactly `dimensions` float64 numbers. A document with anything else there (no such field, a list
of another length, an int64 or a string among the numbers) is stored, as in Convex, and left out
of the index: the write is not refused. Ripple also leaves out vectors whose cosine similarity is
undefined or that pgvector cannot store: all zeros, or holding NaN or an infinity (Convex's
engine would score an all-zero vector 0 against everything).

With pgvector (`method`): an HNSW index over the column (cosine distance) for up to 2,000
dimensions, over its 16-bit `halfvec` cast from 2,001 to 4,000 (pgvector 0.7 or later), and none
above 4,000 or before pgvector 0.5: those searches are exact scans. The column type and the
method are part of the stored definition, so moving the data to a database with or without
pgvector (or a pgvector that can index more) rebuilds the index when the schema is applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from server.core import keys, sql
from server.core.search.derived import Column, DerivedIndex, Features
from server.core.search.text import filter_lexeme

HNSW_SINCE = (0, 5, 0)  # pgvector's first version with HNSW
HALFVEC_SINCE = (0, 7, 0)  # ... with halfvec
ITERATIVE_SCAN_SINCE = (0, 8, 0)  # ... with hnsw.iterative_scan (filtered searches find `limit`)
MAX_HNSW_VECTOR_DIMENSIONS = 2000  # pgvector's HNSW limit for `vector`
MAX_HNSW_HALFVEC_DIMENSIONS = 4000  # ... and for `halfvec`


def unit_vector(value: Any, dimensions: int) -> list[float] | None:
    """The vector a field value puts in the index, scaled to length 1; None: not indexed (not a
    list of `dimensions` float64 numbers, or all zeros, or holding NaN or an infinity)."""
    if not isinstance(value, list) or len(value) != dimensions:
        return None
    for x in value:
        if type(x) is not float and type(x) is not int:  # bool and Int64 are not float64s
            return None
    norm = math.hypot(*value)
    if norm == math.inf and all(math.isfinite(x) for x in value):  # finite, but the length overflows
        biggest = max(abs(x) for x in value)
        value = [x / biggest for x in value]
        norm = math.hypot(*value)
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return [x / norm for x in value]


def search_method(features: Features, dimensions: int) -> str:
    """How searches of an index of `dimensions` run on a database with `features`: "hnsw",
    "hnsw-halfvec" (approximate, through pgvector's HNSW index) or "exact" (a scan)."""
    version = features.pgvector_version
    if not features.pgvector or version < HNSW_SINCE:
        return "exact"
    if dimensions <= MAX_HNSW_VECTOR_DIMENSIONS:
        return "hnsw"
    if dimensions <= MAX_HNSW_HALFVEC_DIMENSIONS and version >= HALFVEC_SINCE:
        return "hnsw-halfvec"
    return "exact"


class VectorColumns(DerivedIndex):
    """One vector index of one table (schema.VectorIndex is its declaration)."""

    kind = "vector"

    def __init__(self, table: str, name: str, vector_field: str, dimensions: int,
                 filter_fields: Sequence[str], features: Features) -> None:
        super().__init__(table, name)
        self.vector_field = vector_field
        self.dimensions = dimensions
        self.filter_fields = list(filter_fields)
        self.features = features
        self.pgvector = features.pgvector
        self.vector_schema = features.vector_schema
        self.method = search_method(features, dimensions)
        self.iterative_scan = features.pgvector_version >= ITERATIVE_SCAN_SINCE
        self.vector_column = "v_" + name
        self.filter_column = "f_" + name
        if self.pgvector:
            self.vector_type = sql.pgvector_type(self.vector_schema, "vector", dimensions)
            self.vector_expr = "{}::float8[]::" + self.vector_type
        else:
            self.vector_type = "float8[]"
            self.vector_expr = "{}::float8[]"

    def columns(self) -> list[Column]:
        return [
            Column(self.vector_column, self.vector_type, self.vector_expr),
            Column(self.filter_column, "text[]", "{}::text[]"),
        ]

    def filter_tokens(self, doc: Mapping[str, Any]) -> list[str]:
        return [filter_lexeme(i, keys.field_value(doc, f)) for i, f in enumerate(self.filter_fields)]

    def values(self, doc: Mapping[str, Any]) -> list[Any]:
        return [unit_vector(keys.field_value(doc, self.vector_field), self.dimensions), self.filter_tokens(doc)]

    def definition(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vector_field": self.vector_field,
            "dimensions": self.dimensions,
            "filter_fields": self.filter_fields,
            "column_type": self.vector_type,
            "method": self.method,
            "columns": [c.name for c in self.columns()],
        }

    def create_statements(self) -> list[str]:
        out = [sql.create_gin_index(self.table, self.name, self.filter_column)]
        if self.method != "exact":
            out.append(sql.create_hnsw_index(
                self.table, self.name, self.vector_schema, self.dimensions, self.method == "hnsw-halfvec"))
        return out

    def relations(self) -> list[str]:
        return [sql.index_name(self.table, self.name), sql.hnsw_index_name(self.table, self.name)]
