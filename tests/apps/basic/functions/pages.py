"""Pages split as Convex splits them (tests/test_pagination_limits.py): paginate with
`maximumRowsRead` / `maximumBytesRead`, over `items` by `n`."""

from typing import Any

from server import query


@query
async def rare(ctx, paginationOpts: dict[str, Any], every: int = 1, rows: int | None = None) -> dict[str, Any]:
    """Documents whose `n` is a multiple of `every`, a page at a time. `rows`, when given, is the
    page's `maximumRowsRead` (the npm paginated client builds `paginationOpts` itself)."""
    opts = dict(paginationOpts)
    if rows is not None:
        opts["maximumRowsRead"] = rows
    q = ctx.db.query("items").with_index("by_n").filter(lambda d: d["n"] % every == 0)
    return await q.paginate(opts)
