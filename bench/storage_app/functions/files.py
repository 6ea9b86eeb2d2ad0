"""Functions bench/storage.py calls: an upload URL, a file's URL, and deleting a file."""

from server import mutation, query


@mutation
async def upload_url(ctx) -> str:
    """A fresh single-use upload URL (POST the bytes to it, get `{"storageId"}` back)."""
    return await ctx.storage.generate_upload_url()


@query
async def url(ctx, id: str) -> str | None:
    """Where the file is served from: `{base}/api/storage/<id>`."""
    return await ctx.storage.get_url(id)


@mutation
async def remove(ctx, id: str) -> None:
    """Delete the file, so repeated runs do not fill the disk or the S3 server's memory."""
    await ctx.storage.delete(id)
