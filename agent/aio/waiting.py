"""Waiting on a worker's wake event with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import math


async def sleep_until(wake: asyncio.Event, seconds: float) -> None:
    """Wait for ``wake`` or ``seconds`` (infinite: no deadline), whichever comes first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(None if math.isinf(seconds) else max(0.0, seconds)):
            await wake.wait()
