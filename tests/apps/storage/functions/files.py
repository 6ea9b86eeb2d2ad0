"""ctx.storage from each kind of function, for tests/test_storage.py and tests/js/storage.test.mjs."""

from typing import Any, Literal

from server import ConvexError, Id, action, mutation, query


@mutation
async def upload_url(ctx) -> str:
    return await ctx.storage.generate_upload_url()


@action
async def upload_url_from_action(ctx) -> str:
    return await ctx.storage.generate_upload_url()


@query
async def url(ctx, id: str) -> str | None:
    return await ctx.storage.get_url(id)


@query
async def metadata(ctx, id: str) -> dict[str, Any] | None:
    return await ctx.storage.get_metadata(id)


@query
async def doc(ctx, id: Id[Literal["_storage"]]) -> dict[str, Any] | None:
    return await ctx.db.system.get(id)


@query
async def all(ctx) -> list[dict[str, Any]]:
    return await ctx.db.system.query("_storage").collect()


@query
async def normalize(ctx, id: str) -> str | None:
    return ctx.db.normalize_id("_storage", id)


@mutation
async def attach(ctx, name: str, file: Id[Literal["_storage"]]) -> dict[str, Any]:
    """Keep a reference to an uploaded file; answer its name and URL."""
    if await ctx.db.system.get(file) is None:
        raise ConvexError({"code": "NO_SUCH_FILE"})
    await ctx.db.insert("attachments", {"name": name, "file": file})
    return {"name": name, "url": await ctx.storage.get_url(file)}


@mutation
async def delete(ctx, id: str) -> None:
    await ctx.storage.delete(id)


@mutation
async def delete_then_fail(ctx, id: str) -> None:
    await ctx.storage.delete(id)
    raise ConvexError("changed my mind")


@mutation
async def delete_nested_failing(ctx, id: str) -> bool:
    """A nested mutation deletes and fails: its delete is undone with it."""
    try:
        await ctx.run_mutation("files:delete_then_fail", {"id": id})
    except ConvexError:
        return False
    return True


@action
async def store(ctx, text: str, content_type: str | None = None, sha256: str | None = None) -> str:
    return await ctx.storage.store(text.encode(), content_type, sha256=sha256)


@action
async def store_streamed(ctx, parts: int, size: int) -> str:
    async def chunks():
        for i in range(parts):
            yield bytes([i % 256]) * size

    return await ctx.storage.store(chunks(), "application/octet-stream")


@action
async def read(ctx, id: str) -> dict[str, Any] | None:
    blob = await ctx.storage.get(id)
    if blob is None:
        return None
    return {"text": (await blob.read()).decode(), "size": blob.size, "contentType": blob.content_type}


@action
async def read_chunks(ctx, id: str) -> list[int] | None:
    blob = await ctx.storage.get(id)
    if blob is None:
        return None
    return [len(chunk) async for chunk in blob]


@action
async def action_metadata(ctx, id: str) -> dict[str, Any] | None:
    return {"url": await ctx.storage.get_url(id), "metadata": await ctx.storage.get_metadata(id)}


@action
async def action_delete(ctx, id: str) -> None:
    await ctx.storage.delete(id)


@action
async def start_multipart(ctx, parts: int, content_type: str | None = None) -> dict[str, Any]:
    return await ctx.storage.start_multipart_upload(parts=parts, content_type=content_type)


@action
async def complete_multipart(ctx, storageId: str, uploadId: str, parts: list[dict[str, Any]]) -> str:
    return await ctx.storage.complete_multipart_upload(storageId, uploadId, parts)


@action
async def abort_multipart(ctx, storageId: str, uploadId: str) -> None:
    await ctx.storage.abort_multipart_upload(storageId, uploadId)


@mutation
async def note(ctx) -> str:
    """A document of another table, whose id is no storage id."""
    return await ctx.db.insert("notes", {"text": "not a file"})
