"""Read-only views of Velero's data-mover objects, DataUpload and DataDownload (velero.io/v2alpha1), and
their shared phase vocabulary (``pkg/apis/velero/v2alpha1/data_upload_types.go``,
``data_download_types.go``).

The API server has already checked the object against the CRD's schema, so the views only supply
defaults for what may be absent (an empty status, a missing ``phase`` meaning New).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from agent.kube.api import CustomResource
from agent.kube.events import ObjectRef
from agent.kube.times import parse_time

DATADOWNLOADS = CustomResource("velero.io", "v2alpha1", "datadownloads", "datadownload")
DATAUPLOADS = CustomResource("velero.io", "v2alpha1", "datauploads", "dataupload")
BACKUP_STORAGE_LOCATIONS = CustomResource("velero.io", "v1", "backupstoragelocations", "backupstoragelocation")
BACKUPS = CustomResource("velero.io", "v1", "backups", "backup")
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
"""Annotation: the node whose agent accepted the object. Kept in metadata because Velero 1.14 and 1.15
CRDs have no ``status.acceptedByNode``, and the API server prunes what a CRD lacks."""
ACCEPTED_AT = "ferry.dev/accepted-at"
"""Annotation: when it was accepted (RFC 3339); the prepare timeout counts from it."""
RESTORE_NODE = "ferry.dev/restore-node"
"""Annotation of a DataDownload, written by the acceptor once the restore pod is scheduled: the node whose
agent prepares it (the watch tells that agent; no other agent polls the pod)."""
BACKUP_NODE = "ferry.dev/backup-node"
"""Annotation of a DataUpload: the same for the backup pod."""
RESTORED_PV = "ferry.dev/restored-pv"
"""Annotation, written once the data is complete: the PV holding it, being handed to the target PVC."""
RECLAIM_POLICY = "ferry.dev/reclaim-policy"
"""Annotation: that PV's reclaim policy before the rebind set it to Retain (restored at the end)."""
REBIND_STARTED = "ferry.dev/rebind-started"
"""Annotation: when the rebind began (operationTimeout bounds it)."""
FINALIZER = "ferry.dev/cleanup"
"""Held while anything Ferry exposed for the object may exist (restore or backup pod, PVC, PV; a backup's
VolumeSnapshots): deleting the object then waits until the agent has removed them."""
SNAPSHOT_FINALIZER = "ferry.dev/snapshot"
"""Put on a DataUpload as it completes when the agents run repository maintenance: deleting it (as Velero
does when it deletes the backup) waits until the maintaining agent has forgotten its snapshot, if its
backup is being deleted or gone, or found that the backup still exists (``agent.controller.maintenance``)."""
SNAPSHOT_CONTENT = "ferry.dev/snapshot-content"
"""Annotation of a DataUpload, written before the exposer touches it: the VolumeSnapshotContent Velero's
VolumeSnapshot was bound to (the cleanup deletes it even once that VolumeSnapshot is gone)."""
UPLOADED = "ferry.dev/uploaded-snapshot"
"""Annotation of a DataUpload, written once every byte is stored: the Ferry snapshot ID. The cleanup
runs next; only then does the ID go into ``status.snapshotID`` with Completed."""
SKIPPED = "ferry.dev/skipped"
"""Annotation of a DataUpload whose snapshot lacks entries that could not be read: how many, and the first
few with the reason (the Completed message repeats it)."""
BACKUP_NAME = "velero.io/backup-name"
BACKUP_UID = "velero.io/backup-uid"
"""Labels Velero puts on a DataUpload (``pkg/backup/actions/csi/pvc_action.go``, ``newDataUpload``)."""
IN_PLACE_KEY = "ferry.inPlace"
"""``spec.dataMoverConfig`` key: ``"true"`` restores into the target PVC where a running pod already
mounts it (hand-written DataDownloads only; Velero never sets it)."""


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


@dataclass(frozen=True, kw_only=True)
class MoverObject:
    """The fields DataUploads and DataDownloads share, as the agent reads them."""

    KIND: ClassVar[str]
    RESOURCE: ClassVar[CustomResource]
    NODE_ANNOTATION: ClassVar[str]
    """Where the acceptor names the node of the pod that exposes the volume."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    created: dt.datetime | None
    deleting: bool
    datamover: str
    storage_location: str
    source_namespace: str
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
    labels: dict[str, str] = field(default_factory=dict)
    finalizers: tuple[str, ...] = ()
    started: str = ""
    message: str = ""
    bytes_done: int = 0
    total_bytes: int = 0

    @property
    def in_place(self) -> bool:
        """Whether it asks to restore into an already mounted target PVC (``ferry.inPlace``; DataDownloads)."""
        return False

    @property
    def exposed_node(self) -> str:
        """The node of the pod that holds the exposed volume, as the acceptor recorded it ("" until then)."""
        return self.annotations.get(self.NODE_ANNOTATION, "")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ref(self) -> ObjectRef:
        """This version of the object, for Events about it."""
        return ObjectRef(API_VERSION, self.KIND, self.namespace, self.name, self.uid, self.resource_version)

    @classmethod
    def from_obj(cls, obj: Obj) -> Self:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        progress = status.get("progress") or {}
        annotations = _strings(meta.get("annotations"))
        return cls(
            name=_str(meta.get("name")),
            namespace=_str(meta.get("namespace")),
            uid=_str(meta.get("uid")),
            resource_version=_str(meta.get("resourceVersion")),
            created=parse_time(meta.get("creationTimestamp")),
            deleting=bool(meta.get("deletionTimestamp")),
            datamover=_str(spec.get("datamover")),
            storage_location=_str(spec.get("backupStorageLocation")),
            source_namespace=_str(spec.get("sourceNamespace")),
            cancel=spec.get("cancel") is True,
            operation_timeout=_str(spec.get("operationTimeout")),
            config=_strings(spec.get("dataMoverConfig")),
            phase=_str(status.get("phase")) or NEW,
            node=_str(status.get("node")),
            accepted_by=annotations.get(ACCEPTED_BY) or _str(status.get("acceptedByNode")),
            accepted_at=parse_time(annotations.get(ACCEPTED_AT)) or parse_time(status.get("acceptedTimestamp")),
            annotations=annotations,
            labels=_strings(meta.get("labels")),
            finalizers=tuple(str(f) for f in meta.get("finalizers") or ()),
            started=_str(status.get("startTimestamp")),
            message=_str(status.get("message")),
            bytes_done=_int(progress.get("bytesDone")),
            total_bytes=_int(progress.get("totalBytes")),
            **cls._own_fields(spec, status),
        )

    @classmethod
    def _own_fields(cls, spec: Obj, status: Obj) -> dict[str, Any]:
        """The fields of the subclass, from the object's spec and status."""
        return {}


@dataclass(frozen=True, kw_only=True)
class DataDownload(MoverObject):
    """The fields of one DataDownload that the agent reads."""

    KIND = "DataDownload"
    RESOURCE = DATADOWNLOADS
    NODE_ANNOTATION = RESTORE_NODE

    snapshot_id: str
    target_namespace: str
    target_pvc: str
    target_pv: str

    @property
    def in_place(self) -> bool:
        return self.config.get(IN_PLACE_KEY, "").strip().lower() in ("1", "true", "yes", "on")

    @property
    def restore_node(self) -> str:
        return self.exposed_node

    @property
    def restored_pv(self) -> str:
        return self.annotations.get(RESTORED_PV, "")

    @classmethod
    def _own_fields(cls, spec: Obj, status: Obj) -> dict[str, Any]:
        target = spec.get("targetVolume") or {}
        return {
            "snapshot_id": _str(spec.get("snapshotID")),
            "target_namespace": _str(target.get("namespace")),
            "target_pvc": _str(target.get("pvc")),
            "target_pv": _str(target.get("pv")),
        }


@dataclass(frozen=True, kw_only=True)
class DataUpload(MoverObject):
    """The fields of one DataUpload that the agent reads (``spec.snapshotType`` CSI: a VolumeSnapshot of
    ``sourceNamespace``/``sourcePVC`` named in ``spec.csiSnapshot``)."""

    KIND = "DataUpload"
    RESOURCE = DATAUPLOADS
    NODE_ANNOTATION = BACKUP_NODE

    source_pvc: str
    snapshot_type: str
    volume_snapshot: str
    storage_class: str
    snapshot_class: str
    driver: str
    snapshot_id: str
    """``status.snapshotID``: set with Completed."""

    @property
    def uploaded(self) -> str:
        """The snapshot ID once every byte is stored (annotation ``ferry.dev/uploaded-snapshot``), else ""."""
        return self.annotations.get(UPLOADED, "")

    @property
    def snapshot_content(self) -> str:
        return self.annotations.get(SNAPSHOT_CONTENT, "")

    @property
    def backup(self) -> tuple[str, str]:
        """The Velero backup it belongs to: (name, uid) from Velero's labels ("" when absent)."""
        return self.labels.get(BACKUP_NAME, ""), self.labels.get(BACKUP_UID, "")

    @classmethod
    def _own_fields(cls, spec: Obj, status: Obj) -> dict[str, Any]:
        csi = spec.get("csiSnapshot") or {}
        return {
            "source_pvc": _str(spec.get("sourcePVC")),
            "snapshot_type": _str(spec.get("snapshotType")),
            "volume_snapshot": _str(csi.get("volumeSnapshot")),
            "storage_class": _str(csi.get("storageClass")),
            "snapshot_class": _str(csi.get("snapshotClass")),
            "driver": _str(csi.get("driver")),
            "snapshot_id": _str(status.get("snapshotID")),
        }
