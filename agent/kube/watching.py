"""List, then watch, the objects of one custom resource (DataDownloads, for the controller): a
controller's only source of change.

The list's resourceVersion starts the watch; each event (bookmarks included) advances it, so a watch
that ends (its timeout) or is cut (a dropped connection) resumes exactly where it was. A 410 (the server
no longer has history that old) means events may have been missed: list again, deliver every object,
and deliver a deletion for every object known before that is no longer listed. Delivery is by name,
latest state only; the controller's per-object workers make repeated delivery harmless.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from agent.errors import KubeError, KubeExpired
from agent.kube.api import CustomResource, Kube, Obj

log = logging.getLogger(__name__)

Deliver = Callable[[str, Obj | None], None]
"""Called with (name, object), or (name, None) when the object is gone."""


class Watcher:
    def __init__(self, kube: Kube, resource: CustomResource, timeout_s: float, deliver: Deliver) -> None:
        self._kube = kube
        self._resource = resource
        self._timeout_s = timeout_s
        self._deliver = deliver
        self._known: set[str] = set()
        self.opened = asyncio.Event()
        """Set while a watch is established (what /readyz reports), cleared when it fails."""
        self.lists = 0
        """Full lists done (the first, then one per 410)."""

    def _relist(self, items: list[Obj]) -> None:
        names = {str((obj.get("metadata") or {}).get("name", "")) for obj in items}
        for obj in items:
            self._deliver(str(obj["metadata"]["name"]), obj)
        for gone in sorted(self._known - names):
            self._deliver(gone, None)
        self._known = names

    def _event(self, kind: str, obj: Obj) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        if kind == "DELETED":
            self._known.discard(name)
            self._deliver(name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self._known.add(name)
            self._deliver(name, obj)
        else:
            log.warning("ignoring watch event of unknown type %s", kind)

    async def run(self) -> None:
        """Until cancelled. API failures are retried with capped, jittered backoff."""
        rv: str | None = None
        failures = 0
        while True:
            try:
                if rv is None:
                    items, rv = await self._kube.list_objects(self._resource)
                    self.lists += 1
                    log.info("listed %d %s", len(items), self._resource.plural, extra={"resourceVersion": rv})
                    self._relist(items)
                async for kind, obj in self._kube.watch_objects(self._resource, rv, self._timeout_s):
                    if kind == "OPEN":
                        self.opened.set()
                        failures = 0
                        continue
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if kind != "BOOKMARK":
                        self._event(kind, obj)
            except KubeExpired:
                log.info("watch history expired; listing again", extra={"resourceVersion": rv})
                rv = None
            except KubeError as e:
                self.opened.clear()
                failures += 1
                delay = random.uniform(0.5, 1.0) * min(30.0, 0.25 * 2 ** min(failures, 8))  # noqa: S311
                log.warning("watching %s failed (%s); again in %.1f s", self._resource.plural, e, delay)
                await asyncio.sleep(delay)
