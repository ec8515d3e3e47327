"""Exposing a CSI snapshot to back up: moved into the mover's namespace, a backup PVC provisioned from it
and a backup pod holding that PVC on a node, as Velero's built-in mover does
(``pkg/exposer/csi_snapshot.go``, ``Expose``/``CleanUp``).

Velero's CSI action leaves a VolumeSnapshot of the application's PVC in the application's namespace. A
PVC's ``dataSource`` may only name a VolumeSnapshot of its own namespace, so the snapshot is moved:

    1. wait until Velero's VolumeSnapshot is ready; the caller records its VolumeSnapshotContent first
    2. a **backup VolumeSnapshot** in the mover's namespace, named after the owning object, naming
    3. a **backup VolumeSnapshotContent** of the same name, statically bound to it, on the same snapshot
       handle, deletionPolicy Delete (so deleting it deletes the storage snapshot)
    4. the original content set to Retain, then the original VolumeSnapshot and content deleted (the
       storage snapshot stays: the backup content holds it now)
    5. once the backup VolumeSnapshot is ready: a **backup PVC** from it (size = its restoreSize, the
       class of the application's PVC, its volume mode) and a **backup pod** mounting it read-only
       (``agent.expose.pods``)

The cleanup removes all of it — pod, PVC and its PV, backup VolumeSnapshot and content (which deletes the
storage snapshot), and the original VolumeSnapshot and content if still there — so that no storage
snapshot outlives a backup, whatever phase it ended in. The VolumeSnapshots and the content carry label
``ferry.dev/owner-uid`` (they cannot have an ownerReference: the VolumeSnapshot must outlive nothing and the
content is cluster-scoped); only objects with the owner's uid are used or deleted.

Every call is one idempotent step: a restarted agent runs it again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from agent.errors import KubeConflict, KubeNotFound, VolumeError
from agent.expose.pods import MANAGED_BY, Exposed, Owner, Place, Pods, Waiting
from agent.kube.api import SNAPSHOT_GROUP, Kube, Obj

OWNER_UID = "ferry.dev/owner-uid"
"""Label on the backup VolumeSnapshot and content: the uid of the object they were made for."""


@dataclass(frozen=True)
class SnapshotExposure(Place):
    """Where a backup is exposed (backup VolumeSnapshot, content, PVC and pod: ``namespace``/``name``), and
    what it backs up: Velero's VolumeSnapshot ``source_namespace``/``volume_snapshot`` of PVC
    ``source_pvc`` of class ``storage_class``."""

    source_namespace: str = ""
    source_pvc: str = ""
    volume_snapshot: str = ""
    storage_class: str = ""

    @property
    def source(self) -> str:
        return f"{self.source_namespace}/{self.volume_snapshot}"

    @property
    def pvc(self) -> str:
        return f"{self.source_namespace}/{self.source_pvc}"


@dataclass(frozen=True)
class Left:
    """What a cleanup found still there: the pod and PVC, and the snapshot objects."""

    exposed: list[str]
    snapshots: list[str]

    def __bool__(self) -> bool:
        return bool(self.exposed or self.snapshots)

    def describe(self) -> str:
        return ", ".join(self.exposed + self.snapshots)


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _ours(obj: Obj | None, uid: str) -> bool:
    return obj is not None and (_meta(obj).get("labels") or {}).get(OWNER_UID) == uid


class SnapshotExposer:
    def __init__(self, kube: Kube, pods: Pods) -> None:
        self._kube = kube
        self.pods = pods

    async def _get(self, namespace: str | None, name: str) -> Obj | None:
        try:
            if namespace is None:
                return await self._kube.get_snapshot_content(name)
            return await self._kube.get_snapshot(namespace, name)
        except KubeNotFound:
            return None

    async def original_content(self, where: SnapshotExposure) -> str | Waiting:
        """Step 1: the VolumeSnapshotContent Velero's VolumeSnapshot is bound to, once it is ready. Raises
        VolumeError when the VolumeSnapshot is gone or failed (Velero's ``WaitVolumeSnapshotReady``)."""
        vs = await self._get(where.source_namespace, where.volume_snapshot)
        if vs is None:
            raise VolumeError(
                f"VolumeSnapshot {where.source} does not exist: Velero creates it before the DataUpload; was it "
                "deleted?"
            )
        status = vs.get("status") or {}
        error = (status.get("error") or {}).get("message")
        if error:
            raise VolumeError(f"VolumeSnapshot {where.source} of PVC {where.pvc} failed: {error}")
        content = status.get("boundVolumeSnapshotContentName")
        if not content or status.get("readyToUse") is not True:
            return Waiting(f"VolumeSnapshot {where.source} of PVC {where.pvc} to be ready")
        return str(content)

    async def expose(self, where: SnapshotExposure, owner: Owner, content: str) -> Exposed | Waiting:
        """Steps 2–5 (``content``: the original VolumeSnapshotContent, from ``original_content``). Raises
        VolumeError when the snapshot can no longer be exposed (gone before it was moved)."""
        backup_vs = await self._get(where.namespace, where.name)
        backup_vsc = await self._get(None, where.name)
        self._refuse_foreign(where, backup_vs, backup_vsc)
        original = await self._get(None, content)
        if backup_vs is None or backup_vsc is None:
            if original is None:
                raise VolumeError(
                    f"VolumeSnapshotContent {content} of VolumeSnapshot {where.source} was deleted before Ferry "
                    "moved it; the snapshot is lost, back the PVC up again"
                )
            handle = (original.get("status") or {}).get("snapshotHandle")
            if not handle:
                return Waiting(f"VolumeSnapshotContent {content} to have a snapshot handle")
            if backup_vs is None:
                backup_vs = await self._create_backup_vs(where, content)
            if backup_vsc is None:
                await self._create_backup_vsc(where, original, backup_vs, str(handle))
        if original is not None:
            await self._retire_original(where, content, original)
            return Waiting(f"VolumeSnapshot {where.source} and content {content} to be gone")
        backup_status = backup_vs.get("status") or {}
        if backup_status.get("readyToUse") is not True:
            error = (backup_status.get("error") or {}).get("message")
            if error:
                raise VolumeError(f"VolumeSnapshot {where.exposed} (moved from {where.source}) failed: {error}")
            return Waiting(f"VolumeSnapshot {where.exposed} to be bound to its content and ready")
        size = str(backup_status.get("restoreSize") or "")
        mode = await self._volume_mode(where)
        if not size:
            size = await self._source_size(where)
        backup_pvc: Obj = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": where.name,
                "namespace": where.namespace,
                "labels": {MANAGED_BY: "ferry"},
                "ownerReferences": [owner.reference()],
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": where.storage_class,
                "volumeMode": mode,
                "dataSource": {"apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": where.name},
                "resources": {"requests": {"storage": size}},
            },
        }
        await self.pods.create(where, "PersistentVolumeClaim", backup_pvc)
        pod = self.pods.hold_pod(where, owner, block=mode == "Block", read_only=True)
        await self.pods.create(where, "Pod", pod)
        return Exposed("")

    def _refuse_foreign(self, where: SnapshotExposure, backup_vs: Obj | None, backup_vsc: Obj | None) -> None:
        """Raise VolumeError when a VolumeSnapshot or content of the backup's names exists and was not made
        for this backup: it is neither used (its data is not the application's) nor deleted."""
        if backup_vs is not None and not _ours(backup_vs, where.owner_uid):
            raise VolumeError(
                f"VolumeSnapshot {where.exposed} already exists and was not made for this backup (Ferry names its "
                "backup VolumeSnapshot after the DataUpload); delete or rename it"
            )
        if backup_vsc is not None and not _ours(backup_vsc, where.owner_uid):
            raise VolumeError(
                f"VolumeSnapshotContent {where.name} already exists and was not made for this backup (Ferry names "
                "its backup VolumeSnapshotContent after the DataUpload); delete or rename it"
            )
        ref = ((backup_vsc or {}).get("spec") or {}).get("volumeSnapshotRef") or {}
        if backup_vs is not None and backup_vsc is not None and ref.get("uid") != _meta(backup_vs).get("uid"):
            raise VolumeError(
                f"VolumeSnapshotContent {where.name} is bound to another VolumeSnapshot than {where.exposed}; "
                "delete both and back the PVC up again"
            )

    async def _create_backup_vs(self, where: SnapshotExposure, content: str) -> Obj:
        original = await self._get(where.source_namespace, where.volume_snapshot)
        class_name = ((original or {}).get("spec") or {}).get("volumeSnapshotClassName")
        body: Obj = {
            "apiVersion": f"{SNAPSHOT_GROUP}/v1",
            "kind": "VolumeSnapshot",
            "metadata": {
                "name": where.name,
                "namespace": where.namespace,
                "labels": {MANAGED_BY: "ferry", OWNER_UID: where.owner_uid},
            },
            "spec": {"source": {"volumeSnapshotContentName": where.name}}
            | ({"volumeSnapshotClassName": class_name} if class_name else {}),
        }
        try:
            return await self._kube.create_snapshot(where.namespace, body)
        except KubeConflict:
            found = await self._get(where.namespace, where.name)
            if found is None:
                raise KubeConflict(
                    f"VolumeSnapshot {where.exposed} was deleted as Ferry created it; trying again", 409
                ) from None
            self._refuse_foreign(where, found, None)
            return found

    async def _create_backup_vsc(self, where: SnapshotExposure, original: Obj, backup_vs: Obj, handle: str) -> None:
        spec = original.get("spec") or {}
        body: Obj = {
            "apiVersion": f"{SNAPSHOT_GROUP}/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": where.name, "labels": {MANAGED_BY: "ferry", OWNER_UID: where.owner_uid}},
            "spec": {
                "volumeSnapshotRef": {
                    "apiVersion": f"{SNAPSHOT_GROUP}/v1",
                    "kind": "VolumeSnapshot",
                    "namespace": where.namespace,
                    "name": where.name,
                    "uid": _meta(backup_vs).get("uid"),
                },
                "source": {"snapshotHandle": handle},
                "deletionPolicy": "Delete",
                "driver": spec.get("driver"),
            }
            | (
                {"volumeSnapshotClassName": spec["volumeSnapshotClassName"]}
                if spec.get("volumeSnapshotClassName")
                else {}
            )
            | ({"sourceVolumeMode": spec["sourceVolumeMode"]} if spec.get("sourceVolumeMode") else {}),
        }
        try:
            await self._kube.create_snapshot_content(body)
        except KubeConflict:
            found = await self._get(None, where.name)
            if found is None:
                raise KubeConflict(
                    f"VolumeSnapshotContent {where.name} was deleted as Ferry created it; trying again", 409
                ) from None
            self._refuse_foreign(where, None, found)

    async def _retire_original(self, where: SnapshotExposure, content: str, original: Obj) -> None:
        """Step 4: Retain on the original content (the backup content holds the snapshot now), then delete the
        original VolumeSnapshot and content."""
        if (original.get("spec") or {}).get("deletionPolicy") != "Retain":
            with contextlib.suppress(KubeNotFound):
                await self._kube.patch_snapshot_content(content, {"spec": {"deletionPolicy": "Retain"}})
        vs = await self._get(where.source_namespace, where.volume_snapshot)
        if vs is not None and not _meta(vs).get("deletionTimestamp"):
            await self._kube.delete_snapshot(where.source_namespace, where.volume_snapshot)
        if not _meta(original).get("deletionTimestamp"):
            await self._kube.delete_snapshot_content(content)

    async def _volume_mode(self, where: SnapshotExposure) -> str:
        """The application PVC's volume mode (as Velero reads it); the backup content's source volume mode
        once that PVC is gone; else Filesystem."""
        try:
            pvc = await self._kube.get_pvc(where.source_namespace, where.source_pvc)
        except KubeNotFound:
            content = await self._get(None, where.name)
            return str(((content or {}).get("spec") or {}).get("sourceVolumeMode") or "Filesystem")
        return "Block" if (pvc.get("spec") or {}).get("volumeMode") == "Block" else "Filesystem"

    async def _source_size(self, where: SnapshotExposure) -> str:
        """The application PVC's request, for a snapshot without a restore size (Velero does the same)."""
        try:
            pvc = await self._kube.get_pvc(where.source_namespace, where.source_pvc)
        except KubeNotFound:
            raise VolumeError(
                f"VolumeSnapshot {where.exposed} has no restore size and PVC {where.pvc} is gone: Ferry cannot size "
                "the backup PVC"
            ) from None
        size = (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
        if not size:
            raise VolumeError(f"VolumeSnapshot {where.exposed} has no restore size and PVC {where.pvc} no request")
        return str(size)

    async def _content_left_by(self, where: SnapshotExposure) -> str:
        """The content Velero's VolumeSnapshot was bound to, found by its ``volumeSnapshotRef`` once that
        VolumeSnapshot is gone before its content was recorded (deleted with its namespace, say): under a
        Retain class it would keep the storage snapshot forever. "" when there is none."""
        for found in await self._kube.list_snapshot_contents():
            ref = (found.get("spec") or {}).get("volumeSnapshotRef") or {}
            if (ref.get("namespace"), ref.get("name")) == (where.source_namespace, where.volume_snapshot):
                return str(_meta(found).get("name") or "")
        return ""

    async def clean_up(self, where: SnapshotExposure, content: str) -> Left:
        """Delete the backup pod and PVC (its PV goes with it), then — once they are gone, since the PVC's
        dataSource names it — the backup VolumeSnapshot and content; and Velero's VolumeSnapshot and its
        content ``content`` if still there, after setting that content's policy to Delete (so that no
        storage snapshot is left whatever happened before). Returns what is still there. Idempotent."""
        exposed = await self.pods.clean_up(where)
        if exposed:
            return Left(exposed, [])
        left: list[str] = []
        backup_vs = await self._get(where.namespace, where.name)
        if _ours(backup_vs, where.owner_uid):
            if not _meta(backup_vs or {}).get("deletionTimestamp"):
                await self._kube.delete_snapshot(where.namespace, where.name)
            left.append(f"VolumeSnapshot {where.exposed}")
        backup_vsc = await self._get(None, where.name)
        if _ours(backup_vsc, where.owner_uid):
            if backup_vs is None and not _meta(backup_vsc or {}).get("deletionTimestamp"):
                await self._kube.delete_snapshot_content(where.name)
            left.append(f"VolumeSnapshotContent {where.name}")
        original_vs = await self._get(where.source_namespace, where.volume_snapshot)
        if not content and original_vs is not None:  # ended before the content was recorded
            content = str((original_vs.get("status") or {}).get("boundVolumeSnapshotContentName") or "")
        if not content and original_vs is None:
            content = await self._content_left_by(where)
        original = await self._get(None, content) if content else None
        if original is not None and (original.get("spec") or {}).get("deletionPolicy") != "Delete":
            with contextlib.suppress(KubeNotFound):
                await self._kube.patch_snapshot_content(content, {"spec": {"deletionPolicy": "Delete"}})
        if original_vs is not None:
            if not _meta(original_vs).get("deletionTimestamp"):
                await self._kube.delete_snapshot(where.source_namespace, where.volume_snapshot)
            left.append(f"VolumeSnapshot {where.source}")
        if original is not None:
            if original_vs is None and not _meta(original).get("deletionTimestamp"):
                await self._kube.delete_snapshot_content(content)
            left.append(f"VolumeSnapshotContent {content}")
        return Left([], left)
