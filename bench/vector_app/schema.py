"""The app bench/vector_search.py measures: documents with an embedding and a genre. The vector
index is declared only when BENCH_VECTOR_DIMENSIONS is set, so that the documents can be loaded
first and the index then built over them by Ripple's index builder."""

import os

from pydantic import BaseModel

from server import Schema, Table, VectorIndex


class Doc(BaseModel):
    embedding: list[float]
    genre: str


_dimensions = int(os.environ.get("BENCH_VECTOR_DIMENSIONS", "0"))
_vector_indexes = {"by_embedding": VectorIndex("embedding", _dimensions, ["genre"])} if _dimensions else {}

schema = Schema(docs=Table(Doc, vector_indexes=_vector_indexes))
