"""Functions that raise what ordinary code never should: BaseExceptions (tests/test_containment.py)."""

import asyncio
from typing import Annotated

from pydantic import AfterValidator

from server import action, mutation, query

RAISED = {
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "CancelledError": asyncio.CancelledError,
}


def _raise(what: str) -> None:
    raise RAISED[what]()


@query
async def in_query(ctx, what: str) -> None:
    _raise(what)


@mutation
async def in_mutation(ctx, what: str) -> None:
    await ctx.db.insert("counters", {"name": "escaped", "value": 1})  # rolled back with the failure
    _raise(what)


@action
async def in_action(ctx, what: str) -> None:
    _raise(what)


def _exit_in_validator(value: int) -> int:
    raise SystemExit(value)


@query
async def in_validator(ctx, x: Annotated[int, AfterValidator(_exit_in_validator)]) -> int:
    return x
