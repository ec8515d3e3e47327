"""Exposing a volume to restore into: a restore PVC and a restore pod, as Velero's own exposer makes them.

Velero's CSI restore action creates the application's PVC with ``spec.volumeName`` cleared and a
``velero.io/dynamic-pv-restore`` selector, so no provisioner binds it: the data mover must supply the PV.
This module provisions that PV the way Velero's built-in mover does (``pkg/exposer/generic_restore.go``,
``Expose``/``createRestorePVC``/``createRestorePod``): a **restore PVC** in the mover's namespace named
after the owning object, copying the target PVC's storage class, access modes, volume mode and size, and
a **restore pod** of the same name that mounts it (``volumeMounts`` for Filesystem, ``volumeDevices`` for
Block), pinned to the node the scheduler picked for the application when its class waits for a first
consumer. The pod only holds the volume on a node: Ferry's agent on that node writes through the kubelet's
directories, so the pod runs unprivileged (``ferry hold``), without a service-account token, with small
requests and a toleration for every taint.

Every call here is one idempotent step (a create that finds the object already there is success), so a
restarted agent simply runs it again. Names and coordinates come in; no Velero object does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import KubeConflict, KubeNotFound, VolumeError
from agent.kube.api import Kube, Obj
from agent.kube.times import parse_time

SELECTED_NODE = "volume.kubernetes.io/selected-node"
"""The annotation the scheduler puts on a WaitForFirstConsumer claim (Kubernetes' volume binding)."""
HOSTNAME = "kubernetes.io/hostname"
MANAGED_BY = "app.kubernetes.io/managed-by"
WAITING_PROBLEMS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"}
)
"""Container waiting reasons that do not clear by themselves (Velero's ``IsPodUnrecoverable`` plus
configuration errors)."""
CONTAINER = "hold"


@dataclass(frozen=True)
class Owner:
    """The object the restore PVC and pod belong to (their ownerReference, with ``controller: true``)."""

    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self) -> Obj:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
        }


@dataclass(frozen=True)
class PodTemplate:
    """How restore pods run: Ferry's own image, unprivileged, holding nothing but the volume."""

    image: str
    pull_policy: str = "IfNotPresent"
    cpu_request: str = "10m"
    memory_request: str = "32Mi"
    memory_limit: str = "128Mi"


@dataclass(frozen=True)
class Exposure:
    """Where a restore is exposed: the restore PVC and pod (``namespace``/``name``, owned by the object of
    uid ``owner_uid``) and the target PVC."""

    namespace: str
    name: str
    target_namespace: str
    target_pvc: str
    owner_uid: str

    @property
    def target(self) -> str:
        return f"{self.target_namespace}/{self.target_pvc}"

    @property
    def restore(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Waiting:
    """Not exposed yet, and why (for logs and the timeout message)."""

    reason: str


@dataclass(frozen=True)
class Exposed:
    selected_node: str
    """The node the restore pod is pinned to ("" when any node will do)."""


@dataclass(frozen=True)
class PodState:
    """The restore pod as the agents need it: where it runs and whether it can still run."""

    exists: bool
    node: str = ""
    running: bool = False
    problem: str = ""
    """Why the pod can never run (a terminal phase, an image that cannot be pulled), or ""."""
    unschedulable_since: dt.datetime | None = None
    unschedulable: str = ""
    """The scheduler's message while the pod does not fit on any node."""


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def owned(obj: Obj, uid: str) -> bool:
    """Whether ``obj`` names the object of ``uid`` among its ownerReferences: only such a restore pod or PVC
    is ours to use or delete (one of the same name made by someone else is left alone)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(ref, dict) and ref.get("uid") == uid for ref in refs)


def claim_is_bound(pvc: Obj) -> bool:
    return bool((pvc.get("spec") or {}).get("volumeName")) and (pvc.get("status") or {}).get("phase") == "Bound"


class RestoreExposer:
    def __init__(self, kube: Kube, template: PodTemplate) -> None:
        self._kube = kube
        self._template = template

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
        owner_ref = owner.reference()
        restore_pvc: Obj = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": where.name,
                "namespace": where.namespace,
                "labels": _labels(target) | {MANAGED_BY: "ferry"},
                "annotations": {SELECTED_NODE: selected} if selected else annotations,
                "ownerReferences": [owner_ref],
            },
            "spec": {
                key: spec[key] for key in ("accessModes", "storageClassName", "volumeMode", "resources") if key in spec
            },
        }
        await self._create(where, "PersistentVolumeClaim", self._kube.create_pvc(where.namespace, restore_pvc))
        block = spec.get("volumeMode") == "Block"
        pod = self._pod(where, owner_ref, block, selected)
        await self._create(where, "Pod", self._kube.create_pod(where.namespace, pod))
        return Exposed(selected)

    async def _create(self, where: Exposure, kind: str, request: Coroutine[Any, Any, Obj]) -> None:
        """Create; one that already exists is fine if it is ours (an earlier attempt, before a restart, made
        it). Raises VolumeError when an object of that name belongs to someone else."""
        try:
            await request
        except KubeConflict:
            pass
        else:
            return
        get = self._kube.get_pvc if kind == "PersistentVolumeClaim" else self._kube.get_pod
        try:
            found = await get(where.namespace, where.name)
        except KubeNotFound:
            raise VolumeError(f"{kind} {where.restore} was deleted as Ferry created it; trying again") from None
        if not owned(found, where.owner_uid):
            raise VolumeError(
                f"{kind} {where.restore} already exists and was not made for this restore (Ferry names its "
                f"restore {kind} after the DataDownload); delete or rename it"
            )

    def _pod(self, where: Exposure, owner_ref: Obj, block: bool, node: str) -> Obj:
        t = self._template
        volume = "volume"
        attach: dict[str, Any] = (
            {"volumeDevices": [{"name": volume, "devicePath": "/dev/restore"}]}
            if block
            else {"volumeMounts": [{"name": volume, "mountPath": "/restore"}]}
        )
        selector = {"kubernetes.io/os": "linux"} | ({HOSTNAME: node} if node else {})
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": where.name,
                "namespace": where.namespace,
                "labels": {MANAGED_BY: "ferry", "app.kubernetes.io/component": "restore-pod"},
                "ownerReferences": [owner_ref],
            },
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 5,
                "nodeSelector": selector,
                "tolerations": [{"operator": "Exists"}],
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 65534,
                    "runAsGroup": 65534,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": t.image,
                        "imagePullPolicy": t.pull_policy,
                        "command": ["ferry", "hold"],
                        "resources": {
                            "requests": {"cpu": t.cpu_request, "memory": t.memory_request},
                            "limits": {"memory": t.memory_limit},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                    | attach
                ],
                "volumes": [{"name": volume, "persistentVolumeClaim": {"claimName": where.name}}],
            },
        }

    async def pod(self, where: Exposure) -> PodState:
        """The restore pod's state (``exists=False`` when it is not there)."""
        try:
            pod = await self._kube.get_pod(where.namespace, where.name)
        except KubeNotFound:
            return PodState(exists=False)
        return pod_state(pod)

    async def clean_up(self, where: Exposure, keep_pv: str = "") -> list[str]:
        """Delete the restore pod, and the restore PVC with its PV (reclaim policy set to Delete first, so
        the provisioner deletes the volume) unless that PV is ``keep_pv``; objects of those names that are
        not ours are left alone. Returns what is still going away (empty once nothing is left). Idempotent."""
        left: list[str] = []
        pod = await find_ours(self._kube, "pod", where)
        if pod is not None:
            await retire(self._kube, "pod", where, pod)
            left.append(f"pod {where.restore}")
        pvc = await find_ours(self._kube, "PVC", where)
        if pvc is None:
            return left
        pv = str((pvc.get("spec") or {}).get("volumeName") or "")
        if pv and pv != keep_pv:
            await self.discard_pv(pv)
        await retire(self._kube, "PVC", where, pvc)
        left.append(f"PVC {where.restore}")
        return left

    async def discard_pv(self, pv: str, *, delete: bool = False) -> None:
        """Make ``pv`` go with its claim (reclaim policy Delete); with ``delete``, delete it now."""
        try:
            found = await self._kube.get_pv(pv)
        except KubeNotFound:
            return
        if (found.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Delete":
            with contextlib.suppress(KubeNotFound):  # another agent's cleanup got there first
                await self._kube.patch_pv(pv, {"spec": {"persistentVolumeReclaimPolicy": "Delete"}})
        if delete and not (found.get("metadata") or {}).get("deletionTimestamp"):
            await self._kube.delete_pv(pv)


async def find_ours(kube: Kube, kind: Literal["pod", "PVC"], where: Exposure) -> Obj | None:
    """The restore pod or PVC of ``where`` if it exists and is ours (another object of that name is not)."""
    get = kube.get_pod if kind == "pod" else kube.get_pvc
    try:
        found = await get(where.namespace, where.name)
    except KubeNotFound:
        return None
    return found if owned(found, where.owner_uid) else None


async def retire(kube: Kube, kind: Literal["pod", "PVC"], where: Exposure, found: Obj) -> bool:
    """Delete the restore pod or PVC ``found`` (as ``find_ours`` returned it) unless it is already going;
    True when the delete was asked for now."""
    if (found.get("metadata") or {}).get("deletionTimestamp"):
        return False
    delete = kube.delete_pod if kind == "pod" else kube.delete_pvc
    await delete(where.namespace, where.name)
    return True


def pod_state(pod: Obj) -> PodState:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    node = str(spec.get("nodeName") or "")
    phase = status.get("phase")
    name = f"{(pod.get('metadata') or {}).get('namespace')}/{(pod.get('metadata') or {}).get('name')}"
    if phase in ("Failed", "Succeeded", "Unknown"):
        why = status.get("message") or status.get("reason") or "no reason given"
        return PodState(True, node, problem=f"restore pod {name} is {phase} on node {node or '(none)'}: {why}")
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in WAITING_PROBLEMS:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return PodState(
                True,
                node,
                problem=f"restore pod {name} cannot start on node {node}: {reason} for image "
                f"{container.get('image', '?')}{detail}",
            )
    for condition in status.get("conditions") or []:
        scheduled = condition.get("type") == "PodScheduled" and condition.get("status") == "False"
        if scheduled and condition.get("reason") == "Unschedulable":
            since = parse_time(condition.get("lastTransitionTime"))
            message = str(condition.get("message") or "no node fits it")
            return PodState(True, node, unschedulable_since=since, unschedulable=message)
    return PodState(True, node, running=phase == "Running" and not (pod.get("metadata") or {}).get("deletionTimestamp"))
