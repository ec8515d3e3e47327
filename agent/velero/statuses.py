"""Writing a DataUpload's or DataDownload's status: optimistic concurrency, conflict retries, both CRD
flavours.

Every write is a JSON merge patch of ``status`` that carries the resourceVersion it was computed from,
so the API server refuses it (409) if anyone wrote in between. On a conflict the object is read again
and the change is computed afresh from it: fields others wrote survive, and a change that no longer
applies (another agent claimed the object, Velero canceled it) is dropped instead of forced.

Velero's own CRDs have no ``/status`` subresource: status goes through the main resource. When discovery
shows ``datadownloads/status`` (or ``datauploads/status``), status goes through it (a main-resource write
would drop it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Generic, TypeVar

from agent.errors import KubeConflict, KubeError, KubeNotFound
from agent.kube.api import Kube, Obj
from agent.velero.objects import MoverObject

log = logging.getLogger(__name__)

T = TypeVar("T", bound=MoverObject)

Change = Callable[[T], Obj | None]
"""Given the current object, the status fields to merge, or None when the change no longer applies."""
MetadataChange = Callable[[T], Obj | None]
"""Given the current object, the metadata fields to merge (annotations, finalizers), or None."""

MAX_CONFLICTS = 20
MAX_TRANSIENT = 6


class StatusWriter(Generic[T]):
    """Writes objects of one kind: ``view`` is its class (``DataUpload`` or ``DataDownload``)."""

    def __init__(self, kube: Kube, view: type[T], via_status_subresource: bool) -> None:
        self._kube = kube
        self._view = view
        self.via_status_subresource = via_status_subresource

    async def update(
        self,
        dd: T,
        change: Change[T],
        metadata: MetadataChange[T] | None = None,
        observe: Callable[[T], None] | None = None,
    ) -> T | None:
        """Apply ``change`` to ``dd``'s status, and ``metadata`` (if given) to its metadata, re-reading on
        conflict. Returns the object as written, or None when the change no longer applies or the object
        is gone. With Velero's CRD flavour both go in one write; with a ``/status`` subresource the
        metadata goes first through the main resource, then the status (recomputed on the result).
        ``observe`` is called with every version of the object the server returns (written or re-read)."""
        seen = observe or (lambda _: None)
        current = dd
        conflicts = transient = 0
        while True:
            fields = change(current)
            if fields is None:
                return None
            meta = metadata(current) if metadata is not None else None
            patch: Obj = {"metadata": {"resourceVersion": current.resource_version} | (meta or {})}
            via_status = self.via_status_subresource and not meta
            if not (self.via_status_subresource and meta):
                patch["status"] = fields
            try:
                written = self._view.from_obj(
                    await self._kube.patch_object(self._view.RESOURCE, current.name, patch, status=via_status)
                )
            except KubeNotFound:
                return None
            except KubeConflict:
                conflicts += 1
                if conflicts >= MAX_CONFLICTS:
                    raise
                log.debug("conflict writing status, reading again", extra={dd.KIND.lower(): dd.key})
            except KubeError as e:
                transient += 1
                if not e.transient or transient >= MAX_TRANSIENT:
                    raise
                await asyncio.sleep(random.uniform(0, min(5.0, 0.2 * 2**transient)))  # noqa: S311
            else:
                seen(written)
                if not (self.via_status_subresource and meta):
                    return written
                current, metadata = written, None  # the metadata went first; now the status
                if not fields:
                    return current
                continue
            try:
                current = self._view.from_obj(await self._kube.get_object(self._view.RESOURCE, dd.name))
                seen(current)
            except KubeNotFound:
                return None
