"""A read-only view of a DataDownload (velero.io/v2alpha1), and the phase vocabulary.

The API server has already checked the object against the CRD's schema, so the view only supplies
defaults for what may be absent (an empty status, a missing ``phase`` meaning New).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from agent.kube.events import ObjectRef
from agent.kube.times import parse_time

API_VERSION = "velero.io/v2alpha1"

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
    accepted_at: dt.datetime | None = None
    started: str = ""
    message: str = ""
    bytes_done: int = 0
    total_bytes: int = 0

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
            accepted_by=_str(status.get("acceptedByNode")),
            accepted_at=parse_time(status.get("acceptedTimestamp")),
            started=_str(status.get("startTimestamp")),
            message=_str(status.get("message")),
            bytes_done=_int(progress.get("bytesDone")),
            total_bytes=_int(progress.get("totalBytes")),
        )
