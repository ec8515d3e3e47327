"""A read-only view of a DataDownload (velero.io/v2alpha1), and the phase vocabulary.

The API server has already checked the object against the CRD's schema, so the view only supplies
defaults for what may be absent (an empty status, a missing ``phase`` meaning New).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from agent.kube.api import CustomResource
from agent.kube.events import ObjectRef
from agent.kube.times import parse_time

DATADOWNLOADS = CustomResource("velero.io", "v2alpha1", "datadownloads", "datadownload")
BACKUP_STORAGE_LOCATIONS = CustomResource("velero.io", "v1", "backupstoragelocations", "backupstoragelocation")
API_VERSION = DATADOWNLOADS.group_version

NEW = "New"
ACCEPTED = "Accepted"
PREPARED = "Prepared"
IN_PROGRESS = "InProgress"
CANCELING = "Canceling"
CANCELED = "Canceled"
COMPLETED = "Completed"
FAILED = "Failed"
TERMINAL = frozenset({CANCELED, COMPLETED, FAILED})

Obj = dict[str, Any]

ACCEPTED_BY = "ferry.dev/accepted-by"
"""Annotation: the node whose agent accepted the DataDownload. Kept in metadata because Velero 1.14 and
1.15 DataDownload CRDs have no ``status.acceptedByNode``, and the API server prunes what a CRD lacks."""
ACCEPTED_AT = "ferry.dev/accepted-at"
"""Annotation: when it was accepted (RFC 3339); the prepare timeout counts from it."""
RESTORE_NODE = "ferry.dev/restore-node"
"""Annotation, written by the acceptor once the restore pod is scheduled: the node whose agent prepares
it (the watch tells that agent; no other agent polls the pod)."""
RESTORED_PV = "ferry.dev/restored-pv"
"""Annotation, written once the data is complete: the PV holding it, being handed to the target PVC."""
RECLAIM_POLICY = "ferry.dev/reclaim-policy"
"""Annotation: that PV's reclaim policy before the rebind set it to Retain (restored at the end)."""
REBIND_STARTED = "ferry.dev/rebind-started"
"""Annotation: when the rebind began (operationTimeout bounds it)."""
FINALIZER = "ferry.dev/cleanup"
"""Held while a restore PVC, pod or PV of ours may exist for the DataDownload: deleting the object then
waits until the agent has removed them."""
IN_PLACE_KEY = "ferry.inPlace"
"""``spec.dataMoverConfig`` key: ``"true"`` restores into the target PVC where a running pod already
mounts it (hand-written DataDownloads only; Velero never sets it)."""


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class DataDownload:
    """The fields of one DataDownload that the agent reads."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    created: dt.datetime | None
    deleting: bool
    datamover: str
    snapshot_id: str
    storage_location: str
    source_namespace: str
    target_namespace: str
    target_pvc: str
    target_pv: str
    cancel: bool
    operation_timeout: str
    config: dict[str, str] = field(default_factory=dict)
    phase: str = NEW
    node: str = ""
    accepted_by: str = ""
    """Annotation ``ferry.dev/accepted-by``, else ``status.acceptedByNode``."""
    accepted_at: dt.datetime | None = None
    """Annotation ``ferry.dev/accepted-at``, else ``status.acceptedTimestamp``."""
    annotations: dict[str, str] = field(default_factory=dict)
    finalizers: tuple[str, ...] = ()
    started: str = ""
    message: str = ""
    bytes_done: int = 0
    total_bytes: int = 0

    @property
    def in_place(self) -> bool:
        """Whether it asks to restore into an already mounted target PVC (``ferry.inPlace``)."""
        return self.config.get(IN_PLACE_KEY, "").strip().lower() in ("1", "true", "yes", "on")

    @property
    def restore_node(self) -> str:
        return self.annotations.get(RESTORE_NODE, "")

    @property
    def restored_pv(self) -> str:
        return self.annotations.get(RESTORED_PV, "")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ref(self) -> ObjectRef:
        """This version of the object, for Events about it."""
        return ObjectRef(API_VERSION, "DataDownload", self.namespace, self.name, self.uid, self.resource_version)

    @classmethod
    def from_obj(cls, obj: Obj) -> DataDownload:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        target = spec.get("targetVolume") or {}
        progress = status.get("progress") or {}
        config = spec.get("dataMoverConfig") or {}
        annotations = meta.get("annotations") or {}
        annotations = {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {}
        return cls(
            name=_str(meta.get("name")),
            namespace=_str(meta.get("namespace")),
            uid=_str(meta.get("uid")),
            resource_version=_str(meta.get("resourceVersion")),
            created=parse_time(meta.get("creationTimestamp")),
            deleting=bool(meta.get("deletionTimestamp")),
            datamover=_str(spec.get("datamover")),
            snapshot_id=_str(spec.get("snapshotID")),
            storage_location=_str(spec.get("backupStorageLocation")),
            source_namespace=_str(spec.get("sourceNamespace")),
            target_namespace=_str(target.get("namespace")),
            target_pvc=_str(target.get("pvc")),
            target_pv=_str(target.get("pv")),
            cancel=spec.get("cancel") is True,
            operation_timeout=_str(spec.get("operationTimeout")),
            config={str(k): str(v) for k, v in config.items()} if isinstance(config, dict) else {},
            phase=_str(status.get("phase")) or NEW,
            node=_str(status.get("node")),
            accepted_by=annotations.get(ACCEPTED_BY) or _str(status.get("acceptedByNode")),
            accepted_at=parse_time(annotations.get(ACCEPTED_AT)) or parse_time(status.get("acceptedTimestamp")),
            annotations=annotations,
            finalizers=tuple(str(f) for f in meta.get("finalizers") or ()),
            started=_str(status.get("startTimestamp")),
            message=_str(status.get("message")),
            bytes_done=_int(progress.get("bytesDone")),
            total_bytes=_int(progress.get("totalBytes")),
        )
