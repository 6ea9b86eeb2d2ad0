"""A function measured by bench/decode.py: it takes one large argument and looks at it once."""

from typing import Any

from server import query


@query
async def size(ctx, value: Any) -> int:
    """How many elements `value` holds at its top level."""
    return len(value)
