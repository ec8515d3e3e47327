"""The storage controllers: the CSI provisioner (``csi.ferry.test``), the PV binder (Kubernetes'
pv_controller) and the pvc-protection / pv-protection controllers. See the package docstring for the rules."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from tests.support.kube import KubeError

from .objects import (
    BIND_COMPLETED,
    BOUND_BY_CONTROLLER,
    PROVISIONED_BY,
    PV_PROTECTION,
    PVC_PROTECTION,
    SELECTED_NODE,
    STORAGE_PROVISIONER,
    TERMINATED,
    Obj,
    annotations_of,
    claim_names,
    key,
    label_selector_matches,
    labels,
    meta,
    phase,
    pv_allows_node,
    quantity,
    requested_storage,
    spec,
    terminating,
    volume_mode,
)
from .snapshots import Refused, provision_from, restore_source

if TYPE_CHECKING:
    from .cluster import SimCluster

PV, PVC = "persistentvolumes", "persistentvolumeclaims"


def claim_ref(claim: Obj) -> Obj:
    m = meta(claim)
    return {
        "kind": "PersistentVolumeClaim",
        "apiVersion": "v1",
        "namespace": m["namespace"],
        "name": m["name"],
        "uid": m["uid"],
        "resourceVersion": m["resourceVersion"],
    }


def names_claim(pv: Obj, claim: Obj) -> bool:
    """The PV's claimRef names this claim: same namespace/name, and no uid or the claim's uid."""
    ref = spec(pv).get("claimRef") or {}
    m = meta(claim)
    same = (ref.get("namespace"), ref.get("name")) == (m["namespace"], m["name"])
    return same and ref.get("uid", "") in ("", m["uid"])


def fits(pv: Obj, claim: Obj) -> bool:
    """Class, volume mode, access modes and capacity fit the claim, and the PV's labels match its selector."""
    pv_spec, claim_spec = spec(pv), spec(claim)
    return (
        (pv_spec.get("storageClassName") or "") == (claim_spec.get("storageClassName") or "")
        and volume_mode(pv) == volume_mode(claim)
        and set(claim_spec.get("accessModes") or []) <= set(pv_spec.get("accessModes") or [])
        and quantity((pv_spec.get("capacity") or {}).get("storage")) >= quantity(requested_storage(claim))
        and label_selector_matches(claim_spec.get("selector"), labels(pv))
    )


def find_volume(claim: Obj, pvs: list[Obj], node: Obj | None) -> Obj | None:
    """The PV the binder would bind a claim without ``spec.volumeName`` to: one pre-bound to it by claimRef,
    else the smallest Available one that fits (on ``node``, for a claim waiting for its first consumer)."""
    usable = [pv for pv in pvs if not terminating(pv) and fits(pv, claim)]
    if node is not None:
        usable = [pv for pv in usable if pv_allows_node(pv, node)]
    for pv in sorted(usable, key=lambda pv: meta(pv)["name"]):
        if spec(pv).get("claimRef") and names_claim(pv, claim):
            return pv
    free = [pv for pv in usable if not spec(pv).get("claimRef") and phase(pv) == "Available"]
    free.sort(key=lambda pv: (quantity(spec(pv)["capacity"]["storage"]), meta(pv)["name"]))
    return free[0] if free else None


class Binder:
    """Kubernetes' PV controller: volume phases (Available, Bound, Released), claim binding, Lost claims."""

    name = "pv-binder"

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim

    async def step(self) -> None:
        kube = self.sim.kube
        claims = {key(c): c for c in kube.list(PVC)}
        for pv in kube.list(PV):
            self._sync_volume(pv, claims)
        for claim in claims.values():
            self._sync_claim(claim)

    def _set_phase(self, pv: Obj, wanted: str) -> None:
        if phase(pv) != wanted:
            self.sim.kube.patch(PV, meta(pv)["name"], {"status": {"phase": wanted}})

    def _sync_volume(self, pv: Obj, claims: dict[tuple[str, str], Obj]) -> None:
        ref = spec(pv).get("claimRef")
        if not ref or not ref.get("uid"):  # free, or pre-bound to a claim that it waits for
            self._set_phase(pv, "Available")
            return
        claim = claims.get((ref.get("namespace", ""), ref.get("name", "")))
        if claim is None or meta(claim)["uid"] != ref["uid"]:
            if phase(pv) != "Failed":
                self._set_phase(pv, "Released")
        elif spec(claim).get("volumeName") == meta(pv)["name"]:
            self._set_phase(pv, "Bound")

    def _sync_claim(self, claim: Obj) -> None:
        if terminating(claim) or phase(claim) == "Lost":
            return
        kube = self.sim.kube
        volume = spec(claim).get("volumeName")
        pvs = kube.list(PV)  # fresh: an earlier claim of this pass may have bound one
        by_name = {meta(pv)["name"]: pv for pv in pvs}
        if phase(claim) == "Bound":
            pv = by_name.get(volume or "")
            if pv is None or (spec(pv).get("claimRef") or {}).get("uid") != meta(claim)["uid"]:
                kube.patch(PVC, meta(claim)["name"], {"status": {"phase": "Lost"}}, meta(claim)["namespace"])
                self.sim.record(claim, "ClaimLost", "Bound claim has lost its PersistentVolume. Data on it is lost!")
            return
        if volume:
            pv = by_name.get(volume)
            ref = spec(pv).get("claimRef") if pv is not None else None
            if pv is not None and (not ref or names_claim(pv, claim)) and fits(pv, claim):
                self._bind(pv, claim)
            return
        class_name = spec(claim).get("storageClassName") or ""
        storage_class = kube.get("storageclasses", class_name) if class_name else None
        node = None
        if storage_class is not None and storage_class.get("volumeBindingMode") == "WaitForFirstConsumer":
            selected = annotations_of(claim).get(SELECTED_NODE)
            node = kube.get("nodes", selected) if selected else None
            if node is None:
                return
        found = find_volume(claim, pvs, node)
        if found is not None:
            self._bind(found, claim)

    def _bind(self, pv: Obj, claim: Obj) -> None:
        kube, m = self.sim.kube, meta(claim)
        pv_patch: Obj = {"spec": {"claimRef": claim_ref(claim)}, "status": {"phase": "Bound"}}
        if not spec(pv).get("claimRef"):
            pv_patch["metadata"] = {"annotations": {BOUND_BY_CONTROLLER: "yes"}}
        bound = kube.patch(PV, meta(pv)["name"], pv_patch)
        notes = {BIND_COMPLETED: "yes"}
        claim_patch: Obj = {
            "metadata": {"annotations": notes},
            "status": {
                "phase": "Bound",
                "capacity": spec(bound).get("capacity") or {},
                "accessModes": spec(bound).get("accessModes") or [],
            },
        }
        if not spec(claim).get("volumeName"):
            notes[BOUND_BY_CONTROLLER] = "yes"
            claim_patch["spec"] = {"volumeName": meta(pv)["name"]}
        kube.patch(PVC, m["name"], claim_patch, m["namespace"])


class Provisioner:
    """The external CSI provisioner of ``csi.ferry.test``, with its backing storage under ``root/storage``."""

    name = "csi-provisioner"

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim
        self._refused: set[tuple[str, str]] = set()  # (claim uid, message) of the ProvisioningFailed events

    async def step(self) -> None:
        kube = self.sim.kube
        for claim in kube.list(PVC):
            self._provision(claim)
        for pv in kube.list(PV):
            self._reclaim(pv)

    def _provision(self, claim: Obj) -> None:
        kube, m, claim_spec = self.sim.kube, meta(claim), spec(claim)
        if phase(claim) != "Pending" or terminating(claim) or claim_spec.get("volumeName"):
            return
        storage_class = kube.get("storageclasses", claim_spec.get("storageClassName") or "")
        if storage_class is None or storage_class.get("provisioner") != self.sim.PROVISIONER:
            return
        node = None
        if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer":
            selected = annotations_of(claim).get(SELECTED_NODE)
            node = kube.get("nodes", selected) if selected else None
            if node is None:
                return
        if find_volume(claim, kube.list(PV), node) is not None:
            return  # the binder's to bind
        if annotations_of(claim).get(STORAGE_PROVISIONER) != self.sim.PROVISIONER:
            notes = {STORAGE_PROVISIONER: self.sim.PROVISIONER}
            claim = kube.patch(PVC, m["name"], {"metadata": {"annotations": notes}}, m["namespace"])
        why = f'failed to provision volume with StorageClass "{meta(storage_class)["name"]}": '
        if claim_spec.get("selector") is not None:
            self._refuse(claim, why + "claim Selector is not supported")
            return
        name = f"pvc-{m['uid']}"
        if kube.get(PV, name) is not None:
            return
        try:
            source = restore_source(self.sim, claim)
        except Refused as refused:
            self._refuse(claim, why + str(refused))
            return
        size = requested_storage(claim) or "1Gi"
        backing = self.sim.backing(name)
        backing.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            provision_from(source[0], backing, claim)
        elif volume_mode(claim) == "Block":
            with backing.open("wb") as f:
                f.truncate(quantity(size))
        else:
            backing.mkdir()
        pv_spec: Obj = {
            "capacity": {"storage": size},
            "accessModes": claim_spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": volume_mode(claim),
            "storageClassName": meta(storage_class)["name"],
            "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
            "claimRef": claim_ref(claim),
            "csi": {"driver": self.sim.PROVISIONER, "volumeHandle": name, "fsType": "ext4"},
        }
        if volume_mode(claim) == "Block":
            del pv_spec["csi"]["fsType"]
        if node is not None:
            term = {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [meta(node)["name"]]}
                ]
            }
            pv_spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [term]}}
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: self.sim.PROVISIONER}},
            "spec": pv_spec,
        }
        kube.create(PV, pv)
        self.sim.record(claim, "ProvisioningSucceeded", f'Successfully provisioned volume "{name}"')

    def _refuse(self, claim: Obj, message: str) -> None:
        """One Warning Event ``ProvisioningFailed`` per claim and reason; the claim stays Pending."""
        if (meta(claim)["uid"], message) not in self._refused:
            self._refused.add((meta(claim)["uid"], message))
            self.sim.record(claim, "ProvisioningFailed", message, warning=True)

    def _reclaim(self, pv: Obj) -> None:
        ours = annotations_of(pv).get(PROVISIONED_BY) == self.sim.PROVISIONER
        if not ours or phase(pv) != "Released" or terminating(pv):
            return
        if spec(pv).get("persistentVolumeReclaimPolicy", "Delete") != "Delete":
            return
        name = meta(pv)["name"]
        backing = self.sim.backing(name)
        if backing.is_dir():
            shutil.rmtree(backing)
        else:
            backing.unlink(missing_ok=True)
        try:
            self.sim.kube.delete(PV, name)
        except KubeError as error:
            if error.code != 404:
                raise


class Protection:
    """The pvc-protection and pv-protection controllers: the admission finalizers come off once the
    object is no longer in use (a claim: no pod that has not terminated names it; a volume: not Bound)."""

    name = "protection"

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim

    async def step(self) -> None:
        kube = self.sim.kube
        pods = kube.list("pods")
        for claim in kube.list(PVC):
            if terminating(claim) and PVC_PROTECTION in (meta(claim).get("finalizers") or []):
                namespace, name = key(claim)
                users = [
                    p
                    for p in pods
                    if meta(p)["namespace"] == namespace and name in claim_names(p) and phase(p) not in TERMINATED
                ]
                if not users:
                    self._release(PVC, claim, PVC_PROTECTION)
        for pv in kube.list(PV):
            if terminating(pv) and phase(pv) != "Bound" and PV_PROTECTION in (meta(pv).get("finalizers") or []):
                self._release(PV, pv, PV_PROTECTION)

    def _release(self, plural: str, obj: Obj, finalizer: str) -> None:
        rest = [f for f in meta(obj).get("finalizers") or [] if f != finalizer]
        namespace = meta(obj).get("namespace")
        self.sim.kube.patch(plural, meta(obj)["name"], {"metadata": {"finalizers": rest or None}}, namespace)
