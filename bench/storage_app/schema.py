"""Schema of the file storage benchmark app (bench/storage.py): no tables of its own; stored files
live in the `_storage` system table."""

from server import Schema

schema = Schema()
