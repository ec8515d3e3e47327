"""What exposing a volume for a restore or a backup shares: the pod that holds the volume on a node, its
PVC's ownership, and their cleanup (Velero's ``pkg/exposer/generic_restore.go`` ``createRestorePod`` and
``pkg/exposer/csi_snapshot.go`` ``createBackupPod`` are the reference).

The pod only holds the volume on a node: Ferry's agent on that node reads or writes it through the kubelet's
directories, so the pod runs unprivileged (``ferry hold``), without a service-account token, with small
requests and a toleration for every taint. The pod and PVC are named after the owning DataUpload or
DataDownload, in its namespace, and carry it as their controller ownerReference; only objects that do are
ever used or deleted.
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
    """The object the exposed PVC and pod belong to (their ownerReference, with ``controller: true``)."""

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
    """How exposing pods run: Ferry's own image, unprivileged, holding nothing but the volume."""

    image: str
    pull_policy: str = "IfNotPresent"
    cpu_request: str = "10m"
    memory_request: str = "32Mi"
    memory_limit: str = "128Mi"


@dataclass(frozen=True)
class Place:
    """Where a volume is exposed: the pod and PVC ``namespace``/``name``, owned by the object of uid
    ``owner_uid``; ``noun`` ("restore", "backup") names them in messages."""

    namespace: str
    name: str
    owner_uid: str
    noun: str

    @property
    def exposed(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Waiting:
    """Not exposed yet, and why (for logs and the timeout message)."""

    reason: str


@dataclass(frozen=True)
class Exposed:
    selected_node: str
    """The node the pod is pinned to ("" when any node will do)."""


@dataclass(frozen=True)
class PodState:
    """The exposing pod as the agents need it: where it runs and whether it can still run."""

    exists: bool
    node: str = ""
    running: bool = False
    problem: str = ""
    """Why the pod can never run (a terminal phase, an image that cannot be pulled), or ""."""
    unschedulable_since: dt.datetime | None = None
    unschedulable: str = ""
    """The scheduler's message while the pod does not fit on any node."""


def labels_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def owned(obj: Obj, uid: str) -> bool:
    """Whether ``obj`` names the object of ``uid`` among its ownerReferences: only such a pod or PVC is
    ours to use or delete (one of the same name made by someone else is left alone)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(ref, dict) and ref.get("uid") == uid for ref in refs)


def claim_is_bound(pvc: Obj) -> bool:
    return bool((pvc.get("spec") or {}).get("volumeName")) and (pvc.get("status") or {}).get("phase") == "Bound"


class Pods:
    """Creating, reading and deleting the pod and PVC of a ``Place``. Every call is one idempotent step."""

    def __init__(self, kube: Kube, template: PodTemplate) -> None:
        self._kube = kube
        self.template = template

    async def create(self, where: Place, kind: Literal["PersistentVolumeClaim", "Pod"], body: Obj) -> None:
        """Create; one that already exists is fine if it is ours (an earlier attempt, before a restart, made
        it). Raises VolumeError when an object of that name belongs to someone else."""
        request: Coroutine[Any, Any, Obj] = (
            self._kube.create_pvc(where.namespace, body)
            if kind == "PersistentVolumeClaim"
            else self._kube.create_pod(where.namespace, body)
        )
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
            raise KubeConflict(f"{kind} {where.exposed} was deleted as Ferry created it; trying again", 409) from None
        if not owned(found, where.owner_uid):
            raise VolumeError(
                f"{kind} {where.exposed} already exists and was not made for this {where.noun} (Ferry names its "
                f"{where.noun} {kind} after the {'DataUpload' if where.noun == 'backup' else 'DataDownload'}); "
                "delete or rename it"
            )

    def hold_pod(self, where: Place, owner: Owner, *, block: bool, node: str = "", read_only: bool = False) -> Obj:
        """The pod that holds PVC ``where`` on a node (pinned to ``node`` if given): mounted at ``/<noun>``
        (Filesystem) or attached at ``/dev/<noun>`` (Block)."""
        t = self.template
        volume = "volume"
        attach: dict[str, Any] = (
            {"volumeDevices": [{"name": volume, "devicePath": f"/dev/{where.noun}"}]}
            if block
            else {"volumeMounts": [{"name": volume, "mountPath": f"/{where.noun}", "readOnly": read_only}]}
        )
        selector = {"kubernetes.io/os": "linux"} | ({HOSTNAME: node} if node else {})
        claim: Obj = {"claimName": where.name} | ({"readOnly": True} if read_only else {})
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": where.name,
                "namespace": where.namespace,
                "labels": {MANAGED_BY: "ferry", "app.kubernetes.io/component": f"{where.noun}-pod"},
                "ownerReferences": [owner.reference()],
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
                "volumes": [{"name": volume, "persistentVolumeClaim": claim}],
            },
        }

    async def pod(self, where: Place) -> PodState:
        """The pod's state (``exists=False`` when it is not there)."""
        try:
            pod = await self._kube.get_pod(where.namespace, where.name)
        except KubeNotFound:
            return PodState(exists=False)
        return pod_state(pod, where.noun)

    async def clean_up(self, where: Place, keep_pv: str = "") -> list[str]:
        """Delete the pod, and the PVC with its PV (reclaim policy set to Delete first, so the provisioner
        deletes the volume) unless that PV is ``keep_pv``; objects of those names that are not ours are
        left alone. Returns what is still going away (empty once nothing is left). Idempotent."""
        left: list[str] = []
        pod = await find_ours(self._kube, "pod", where)
        if pod is not None:
            await retire(self._kube, "pod", where, pod)
            left.append(f"{where.noun} pod {where.exposed}")
        pvc = await find_ours(self._kube, "PVC", where)
        if pvc is None:
            return left
        pv = str((pvc.get("spec") or {}).get("volumeName") or "")
        if pv and pv != keep_pv:
            await self.discard_pv(pv)
        await retire(self._kube, "PVC", where, pvc)
        left.append(f"{where.noun} PVC {where.exposed}")
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


async def find_ours(kube: Kube, kind: Literal["pod", "PVC"], where: Place) -> Obj | None:
    """The pod or PVC of ``where`` if it exists and is ours (another object of that name is not)."""
    get = kube.get_pod if kind == "pod" else kube.get_pvc
    try:
        found = await get(where.namespace, where.name)
    except KubeNotFound:
        return None
    return found if owned(found, where.owner_uid) else None


async def retire(kube: Kube, kind: Literal["pod", "PVC"], where: Place, found: Obj) -> bool:
    """Delete the pod or PVC ``found`` (as ``find_ours`` returned it) unless it is already going; True when
    the delete was asked for now."""
    if (found.get("metadata") or {}).get("deletionTimestamp"):
        return False
    delete = kube.delete_pod if kind == "pod" else kube.delete_pvc
    await delete(where.namespace, where.name)
    return True


def pod_state(pod: Obj, noun: str = "restore") -> PodState:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    node = str(spec.get("nodeName") or "")
    phase = status.get("phase")
    name = f"{(pod.get('metadata') or {}).get('namespace')}/{(pod.get('metadata') or {}).get('name')}"
    if phase in ("Failed", "Succeeded", "Unknown"):
        why = status.get("message") or status.get("reason") or "no reason given"
        return PodState(True, node, problem=f"{noun} pod {name} is {phase} on node {node or '(none)'}: {why}")
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in WAITING_PROBLEMS:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return PodState(
                True,
                node,
                problem=f"{noun} pod {name} cannot start on node {node}: {reason} for image "
                f"{container.get('image', '?')}{detail}",
            )
    for condition in status.get("conditions") or []:
        scheduled = condition.get("type") == "PodScheduled" and condition.get("status") == "False"
        if scheduled and condition.get("reason") == "Unschedulable":
            since = parse_time(condition.get("lastTransitionTime"))
            message = str(condition.get("message") or "no node fits it")
            return PodState(True, node, unschedulable_since=since, unschedulable=message)
    return PodState(True, node, running=phase == "Running" and not (pod.get("metadata") or {}).get("deletionTimestamp"))
