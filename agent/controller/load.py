"""The node's load limit (Velero's ``loadConcurrency``): at most ``limit`` transfers (backups and restores
together) run at once, the rest wait in arrival order. A waiter is woken through its worker's wake event,
the same event that object changes set, so a queued object still reacts at once to a cancel."""

from __future__ import annotations

import asyncio
from collections import OrderedDict


class LoadLimiter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._holders: set[str] = set()
        self._queue: OrderedDict[str, asyncio.Event] = OrderedDict()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def queued_of(self, prefix: str) -> int:
        """Waiters whose name starts with ``prefix`` (one kind of object)."""
        return sum(1 for name in self._queue if name.startswith(prefix))

    @property
    def running(self) -> int:
        return len(self._holders)

    def acquire(self, name: str, wake: asyncio.Event) -> bool:
        """True if ``name`` holds a slot (now or already); otherwise it is queued and ``wake`` is set when
        its turn comes (it must then call ``acquire`` again)."""
        if name in self._holders:
            return True
        first = next(iter(self._queue), name)
        if len(self._holders) < self.limit and first == name:
            self._queue.pop(name, None)
            self._holders.add(name)
            self._wake_next()
            return True
        self._queue.setdefault(name, wake)
        return False

    def release(self, name: str) -> None:
        """Give up a slot or a place in the queue (either may be absent)."""
        self._holders.discard(name)
        self._queue.pop(name, None)
        self._wake_next()

    def _wake_next(self) -> None:
        if len(self._holders) < self.limit and self._queue:
            next(iter(self._queue.values())).set()
