"""File storage (docs/storage.md): where the bytes of stored files live (`blobs`: local disk or
S3-compatible object storage), and what functions and clients do with them.

A stored file is a document of the `_storage` system table (its id is the storage id) and one
object in the blob store whose key is that id. The object is written first and the document
last, so a registered file always has its bytes; deleting removes the document in the
mutation's transaction and the bytes after it commits.
"""
