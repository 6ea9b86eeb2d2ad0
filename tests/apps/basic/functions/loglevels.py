"""print() and the logging module inside functions (tests/test_log_levels.py)."""

import logging

from server import action, mutation, query

log = logging.getLogger(__name__)  # a user module's logger: "functions.loglevels" or similar
log.setLevel(logging.DEBUG)  # its debug records pass its level; the root logger's does not matter


def emit(tag: str) -> None:
    print("print", tag, {"k": 1}, [1.5, None])
    log.debug("debug %s", tag)
    log.info("info %s", tag)
    log.warning("warning %s", tag)
    log.error("error %s", tag)
    log.critical("critical %s", tag)
    try:
        {}["missing"]
    except KeyError:
        log.exception("exception %s", tag)
    logging.getLogger("ripple.functions.test").warning("ripple's own %s", tag)  # not a log line


@query
async def levels(ctx, tag: str) -> str:
    emit(tag)
    return tag


@mutation
async def levels_mutation(ctx, tag: str) -> str:
    emit(tag)
    return tag


@action
async def levels_action(ctx, tag: str) -> str:
    emit(tag)
    return tag
