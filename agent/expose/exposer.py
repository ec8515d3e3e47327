"""Exposing a volume to restore into: a restore PVC and a restore pod, as Velero's own exposer makes them.

Velero's CSI restore action creates the application's PVC with ``spec.volumeName`` cleared and a
``velero.io/dynamic-pv-restore`` selector, so no provisioner binds it: the data mover must supply the PV.
This module provisions that PV the way Velero's built-in mover does (``pkg/exposer/generic_restore.go``,
``Expose``/``createRestorePVC``/``createRestorePod``): a **restore PVC** in the mover's namespace named
after the owning object, copying the target PVC's storage class, access modes, volume mode and size, and
a **restore pod** of the same name that mounts it (``agent.expose.pods``), pinned to the node the scheduler
picked for the application when its class waits for a first consumer.

Every call here is one idempotent step (a create that finds the object already there is success), so a
restarted agent simply runs it again. Names and coordinates come in; no Velero object does.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import KubeNotFound, VolumeError
from agent.expose.pods import (
    MANAGED_BY,
    Exposed,
    Owner,
    Place,
    Pods,
    PodState,
    Waiting,
    labels_of,
)
from agent.kube.api import Kube, Obj

SELECTED_NODE = "volume.kubernetes.io/selected-node"
"""The annotation the scheduler puts on a WaitForFirstConsumer claim (Kubernetes' volume binding)."""


@dataclass(frozen=True)
class Exposure(Place):
    """Where a restore is exposed (the restore PVC and pod), and its target PVC."""

    target_namespace: str = ""
    target_pvc: str = ""

    @property
    def target(self) -> str:
        return f"{self.target_namespace}/{self.target_pvc}"

    @property
    def restore(self) -> str:
        return self.exposed


class RestoreExposer:
    def __init__(self, kube: Kube, pods: Pods) -> None:
        self._kube = kube
        self.pods = pods

    async def target(self, where: Exposure) -> Obj | None:
        try:
            return await self._kube.get_pvc(where.target_namespace, where.target_pvc)
        except KubeNotFound:
            return None

    async def expose(self, where: Exposure, owner: Owner) -> Exposed | Waiting:
        """Create the restore PVC and pod if they are not there yet. Waits (returns ``Waiting``) for the
        target PVC to exist and, for a WaitForFirstConsumer class, for its selected node. Raises
        VolumeError when the target can never be restored into this way (already bound, no class)."""
        target = await self.target(where)
        if target is None:
            return Waiting(f"PVC {where.target} to be created")
        spec = target.get("spec") or {}
        annotations = dict((target.get("metadata") or {}).get("annotations") or {})
        if spec.get("volumeName"):
            raise VolumeError(
                f"PVC {where.target} is already bound to volume {spec['volumeName']}: Ferry restores into a new "
                "volume that it hands to an unbound PVC (as Velero creates them); delete the PVC or restore into "
                "another one"
            )
        class_name = spec.get("storageClassName")
        if not class_name:
            raise VolumeError(
                f"PVC {where.target} names no storage class: Ferry provisions the restored volume through the "
                "PVC's class; set spec.storageClassName (or a default class) on the PVC"
            )
        try:
            storage_class = await self._kube.get_storage_class(str(class_name))
        except KubeNotFound:
            raise VolumeError(f"StorageClass {class_name} of PVC {where.target} does not exist") from None
        selected = annotations.get(SELECTED_NODE, "")
        if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer" and not selected:
            return Waiting(
                f"a pod using PVC {where.target} to be scheduled (StorageClass {class_name} waits for the first "
                "consumer before it places a volume)"
            )
        restore_pvc: Obj = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": where.name,
                "namespace": where.namespace,
                "labels": labels_of(target) | {MANAGED_BY: "ferry"},
                "annotations": {SELECTED_NODE: selected} if selected else annotations,
                "ownerReferences": [owner.reference()],
            },
            "spec": {
                key: spec[key] for key in ("accessModes", "storageClassName", "volumeMode", "resources") if key in spec
            },
        }
        await self.pods.create(where, "PersistentVolumeClaim", restore_pvc)
        block = spec.get("volumeMode") == "Block"
        await self.pods.create(where, "Pod", self.pods.hold_pod(where, owner, block=block, node=selected))
        return Exposed(selected)

    async def pod(self, where: Exposure) -> PodState:
        return await self.pods.pod(where)
