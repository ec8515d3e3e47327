"""Handing the restored volume to the application's PVC, exactly as Velero's ``RebindVolume`` does
(``pkg/exposer/generic_restore.go``; the patches are ``pkg/util/kube/pvc_pv.go``'s ``SetPVReclaimPolicy``,
``RebindPVC`` and ``ResetPVBinding``):

    1. the restore PVC is Bound; its PV and reclaim policy are recorded (by the caller, before any change)
    2. the PV's reclaim policy becomes Retain, so deleting the restore PVC keeps the data
    3. the restore pod is deleted, then the restore PVC; both must be gone
    4. the target PVC gets ``spec.volumeName`` (set once, from empty) without the binder's annotations
    5. the PV gets ``claimRef`` {kind, namespace, name} of the target (uid and resourceVersion cleared),
       loses ``pv.kubernetes.io/bound-by-controller`` and gains the target's selector labels
    6. wait until the PV is Bound to the target PVC (and the PVC to it)
    7. the PV's reclaim policy is restored

``step`` looks at the cluster and does the first thing still missing, so running it again after a restart
at any point finishes the rebind instead of starting over: each step's effect is what the next one checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import KubeNotFound, VolumeError
from agent.expose.exposer import Exposure
from agent.expose.pods import find_ours, owned, retire
from agent.kube.api import Kube, Obj

BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"


@dataclass(frozen=True)
class Record:
    """What must survive a restart during the rebind: the restored PV and its original reclaim policy."""

    pv: str
    reclaim_policy: str


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Pending:
    """The rebind is under way: waiting for ``reason`` (the cluster will move; look again)."""

    reason: str
    acted: bool = False
    """True when this call changed something (the next step can be tried at once)."""
    stopped: bool = False
    """True when ``may_hand_over`` said no before the hand-over."""


def bound_to(pv: Obj, namespace: str, name: str) -> bool:
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    return ref.get("namespace") == namespace and ref.get("name") == name


class Rebinder:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def record(self, where: Exposure) -> Record | Pending:
        """Step 1: the restore PVC's PV and its reclaim policy, once the PVC is Bound."""
        try:
            pvc = await self._kube.get_pvc(where.namespace, where.name)
        except KubeNotFound:
            raise VolumeError(f"restore PVC {where.restore} is gone before its volume was handed over") from None
        if not owned(pvc, where.owner_uid):
            raise VolumeError(f"PVC {where.restore} is not the restore PVC Ferry made for this restore")
        pv_name = str((pvc.get("spec") or {}).get("volumeName") or "")
        if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
            return Pending(f"restore PVC {where.restore} to be bound")
        pv = await self._kube.get_pv(pv_name)
        return Record(pv_name, str((pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") or "Delete"))

    async def handed_over(self, where: Exposure, record: Record) -> bool:
        """Whether step 4 happened: the target PVC names the PV (from then on the rebind cannot be undone;
        ``spec.volumeName`` may be set only once)."""
        try:
            target = await self._kube.get_pvc(where.target_namespace, where.target_pvc)
        except KubeNotFound:
            return False
        return (target.get("spec") or {}).get("volumeName") == record.pv

    async def advance(
        self, where: Exposure, record: Record, may_hand_over: Callable[[], bool], max_steps: int = 16
    ) -> Done | Pending:
        """Do the missing steps of 2–7 until one has to wait for the cluster (or all are done). Step 4 cannot
        be undone, so ``may_hand_over()`` is asked right before it: False stops there (``Pending`` with
        ``stopped``). Raises VolumeError when the rebind cannot finish (the PV or the target PVC
        disappeared, or the target was bound to another volume)."""
        for _ in range(max_steps):
            result = await self.step(where, record, may_hand_over)
            if isinstance(result, Done) or not result.acted:
                return result
        return Pending("the cluster to settle", acted=True)

    async def step(self, where: Exposure, record: Record, may_hand_over: Callable[[], bool]) -> Done | Pending:
        """Do the next missing step of 2–7 (see ``advance``)."""
        kube = self._kube
        try:
            pv = await kube.get_pv(record.pv)
        except KubeNotFound:
            raise VolumeError(f"the restored volume {record.pv} disappeared before it was handed over") from None
        pv_spec = pv.get("spec") or {}
        at_target = bound_to(pv, where.target_namespace, where.target_pvc)
        # 2. Retain before anything can release the PV (not again once it is the target's).
        if not at_target and pv_spec.get("persistentVolumeReclaimPolicy") != "Retain":
            await kube.patch_pv(record.pv, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
            return Pending(f"PV {record.pv} to be retained", acted=True)
        # 3. The restore pod, then the restore PVC (ours only: another object of that name means ours is gone).
        for kind in ("pod", "PVC"):
            found = await find_ours(kube, kind, where)
            if found is not None:
                acted = await retire(kube, kind, where, found)
                return Pending(f"restore {kind} {where.restore} to be gone", acted=acted)
        # 4. The target PVC names the PV.
        try:
            target = await kube.get_pvc(where.target_namespace, where.target_pvc)
        except KubeNotFound:
            raise VolumeError(
                f"PVC {where.target} was deleted before the restored volume could be handed to it"
            ) from None
        t_meta, t_spec = target.get("metadata") or {}, target.get("spec") or {}
        volume_name = t_spec.get("volumeName") or ""
        if volume_name and volume_name != record.pv:
            raise VolumeError(
                f"PVC {where.target} was bound to volume {volume_name} by someone else while Ferry restored "
                f"{record.pv} for it"
            )
        if not volume_name:
            if not may_hand_over():
                return Pending(f"PVC {where.target} not given volume {record.pv}: told to stop", stopped=True)
            annotations = t_meta.get("annotations") or {}
            patch: Obj = {"metadata": {"resourceVersion": t_meta.get("resourceVersion")}}
            patch["spec"] = {"volumeName": record.pv}
            drop = {key: None for key in (BIND_COMPLETED, BOUND_BY_CONTROLLER) if key in annotations}
            if drop:
                patch["metadata"]["annotations"] = drop
            await kube.patch_pvc(where.target_namespace, where.target_pvc, patch)
            return Pending(f"PVC {where.target} to name volume {record.pv}", acted=True)
        # 5. The PV's claim is the target, without the restore PVC's uid; the selector's labels on it.
        wanted = dict(((t_spec.get("selector") or {}).get("matchLabels")) or {})
        labels = (pv.get("metadata") or {}).get("labels") or {}
        missing = {k: v for k, v in wanted.items() if k not in labels}
        ref = pv_spec.get("claimRef") or {}
        claim_wrong = not at_target or bool(ref.get("uid") and ref.get("uid") != t_meta.get("uid"))
        if claim_wrong or missing:
            pv_patch: Obj = {"metadata": {"resourceVersion": (pv.get("metadata") or {}).get("resourceVersion")}}
            pv_patch["spec"] = {
                "claimRef": {
                    "kind": "PersistentVolumeClaim",
                    "apiVersion": "v1",
                    "namespace": where.target_namespace,
                    "name": where.target_pvc,
                    "uid": None,
                    "resourceVersion": None,
                    "fieldPath": None,
                }
            }
            if missing:
                pv_patch["metadata"]["labels"] = missing
            if BOUND_BY_CONTROLLER in ((pv.get("metadata") or {}).get("annotations") or {}):
                pv_patch["metadata"]["annotations"] = {BOUND_BY_CONTROLLER: None}
            if not claim_wrong:  # already the target's claim, with its uid: only the labels
                del pv_patch["spec"]
            await kube.patch_pv(record.pv, pv_patch)
            return Pending(f"PV {record.pv} to be bound to PVC {where.target}", acted=True)
        # 6. Bound both ways.
        if (pv.get("status") or {}).get("phase") != "Bound" or (target.get("status") or {}).get("phase") != "Bound":
            return Pending(f"PV {record.pv} and PVC {where.target} to be bound to each other")
        # 7. The reclaim policy it had.
        if pv_spec.get("persistentVolumeReclaimPolicy") != record.reclaim_policy:
            await kube.patch_pv(record.pv, {"spec": {"persistentVolumeReclaimPolicy": record.reclaim_policy}})
        return Done()
