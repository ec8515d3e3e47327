"""Watch subscriptions: which changes a watcher sees, and how they are turned into watch events.

A watcher's queue is filled synchronously by the store as each change is committed, so a watch started
from a resourceVersion misses nothing and sees every change exactly once, in commit order.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any

from .resources import ResourceType
from .selectors import Matcher


@dataclass(frozen=True)
class Change:
    """One committed write: ``new`` is the stored object (for DELETED, its final state)."""

    rv: int
    type: str
    rtype: ResourceType
    old: dict[str, Any] | None
    new: dict[str, Any]


@dataclass(frozen=True)
class Revision:
    """One stored version of an object, as :meth:`KubeServer.history` reports it."""

    type: str  # ADDED, MODIFIED or DELETED
    object: dict[str, Any]

    @property
    def deleted(self) -> bool:
        return self.type == "DELETED"


# Queue items: ("EVENT", type, object) | ("BOOKMARK", resourceVersion) | ("END", clean)
Item = tuple[Any, ...]


@dataclass(eq=False)
class Watcher:
    rtype: ResourceType
    namespace: str | None
    matcher: Matcher
    bookmarks: bool
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)

    def _sees(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.matcher(obj)

    def event_for(self, change: Change) -> tuple[str, dict[str, Any]] | None:
        """The event this watcher gets for ``change`` (selector transitions become ADDED/DELETED)."""
        if change.rtype.qualified != self.rtype.qualified:
            return None
        if change.type == "DELETED":
            return ("DELETED", change.new) if self._sees(change.new) else None
        was, now = self._sees(change.old), self._sees(change.new)
        if was and now:
            return change.type, change.new
        if now:
            return "ADDED", change.new
        if was and change.old is not None:
            # The apiserver sends the last matching state, carrying the resourceVersion of the change.
            gone = copy.deepcopy(change.old)
            gone["metadata"]["resourceVersion"] = change.new["metadata"]["resourceVersion"]
            return "DELETED", gone
        return None

    def offer(self, change: Change) -> None:
        event = self.event_for(change)
        if event is not None:
            self.queue.put_nowait(("EVENT", *event))

    def bookmark(self, resource_version: int) -> None:
        if self.bookmarks:
            self.queue.put_nowait(("BOOKMARK", resource_version))

    def end(self, *, clean: bool) -> None:
        self.queue.put_nowait(("END", clean))

    def bookmark_object(self, resource_version: int) -> dict[str, Any]:
        return {
            "apiVersion": self.rtype.api_version,
            "kind": self.rtype.kind,
            "metadata": {"resourceVersion": str(resource_version)},
        }
