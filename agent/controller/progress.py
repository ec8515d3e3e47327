"""A running restore's progress, as the data path reports it and as the status shows it."""

from __future__ import annotations

import asyncio
import time


class ProgressTracker:
    """Fed by the restore on the event loop; read by the status reporter and the stall check.

    ``floor`` is the ``bytesDone`` already in the status (a restore restarted after an interruption
    starts again from zero): the reported figure never goes below it, so it only ever grows.
    """

    def __init__(self, floor: int = 0, floor_total: int = 0) -> None:
        self.done = 0
        self.total = 0
        self._floor = floor
        self._floor_total = floor_total
        self.known = asyncio.Event()
        """Set once the restore knows its total."""
        self.last_advance = time.monotonic()

    def update(self, done: int, total: int) -> None:
        if done > self.done or not self.known.is_set():
            self.last_advance = time.monotonic()
        self.done, self.total = max(done, self.done), total
        self.known.set()

    def idle_s(self) -> float:
        """Seconds since the restore last moved forward (or started)."""
        return time.monotonic() - self.last_advance

    def reported(self) -> int:
        """bytesDone as the status should show it: monotonic across restarts, never above the total."""
        floor = self._floor if self._floor_total == self.total else 0
        return min(max(self.done, floor), self.total)
