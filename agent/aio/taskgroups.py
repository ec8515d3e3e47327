"""Task groups whose failures read like the failure that caused them.

``asyncio.TaskGroup`` raises an ``ExceptionGroup`` even when one task failed and the rest were merely
cancelled because of it. ``task_group`` unwraps that: it re-raises the first ``FerryError`` among the
leaves (else the first exception), so callers and operators see "chunk X in pack Y is corrupt", not
"unhandled errors in a TaskGroup". Cancellation passes through untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent.errors import FerryError

log = logging.getLogger(__name__)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        first = next((e for e in leaves if isinstance(e, FerryError)), leaves[0])
        for other in leaves:
            if other is not first:
                log.debug("also failed while stopping: %r", other)
        raise first from None
