"""The scheduler: binds pods without ``spec.nodeName`` to a feasible node (see the package docstring)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .objects import (
    SELECTED_NODE,
    TERMINATED,
    Obj,
    annotations_of,
    claim_names,
    labels,
    meta,
    node_selector_matches,
    phase,
    pv_allows_node,
    spec,
    status,
    terminating,
    tolerated,
    with_condition,
)

if TYPE_CHECKING:
    from .cluster import SimCluster

AFFINITY = "node(s) didn't match Pod's node affinity/selector"
VOLUME_AFFINITY = "node(s) had volume node affinity conflict"
UNSCHEDULABLE = "node(s) were unschedulable"
UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"


class Scheduler:
    name = "scheduler"

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim
        self._assumed: dict[str, str] = {}  # pod uid -> the node chosen while its WFFC claims get bound

    async def step(self) -> None:
        kube = self.sim.kube
        pods = kube.list("pods")
        nodes = kube.list("nodes")
        live = {meta(p)["uid"] for p in pods}
        self._assumed = {uid: node for uid, node in self._assumed.items() if uid in live}
        for pod in pods:
            name = spec(pod).get("schedulerName") or "default-scheduler"
            if spec(pod).get("nodeName") or terminating(pod) or phase(pod) in TERMINATED or name != "default-scheduler":
                continue
            self._schedule(pod, nodes, pods)

    def _schedule(self, pod: Obj, nodes: list[Obj], pods: list[Obj]) -> None:
        kube, m = self.sim.kube, meta(pod)
        namespace = m["namespace"]
        bound_pvs: list[Obj] = []
        waiting: list[Obj] = []  # unbound claims of WaitForFirstConsumer classes
        immediate_unbound = False
        for claim_name in claim_names(pod):
            claim = kube.get("persistentvolumeclaims", claim_name, namespace)
            if claim is None:
                self._unschedulable(pod, f'persistentvolumeclaim "{claim_name}" not found')
                return
            if terminating(claim):
                self._unschedulable(pod, f'persistentvolumeclaim "{claim_name}" is being deleted')
                return
            if phase(claim) == "Bound":
                pv = kube.get("persistentvolumes", spec(claim).get("volumeName") or "")
                if pv is None:
                    self._unschedulable(pod, f'persistentvolume "{spec(claim).get("volumeName")}" not found')
                    return
                bound_pvs.append(pv)
                continue
            class_name = spec(claim).get("storageClassName") or ""
            storage_class = kube.get("storageclasses", class_name) if class_name else None
            if storage_class is not None and storage_class.get("volumeBindingMode") == "WaitForFirstConsumer":
                waiting.append(claim)
            else:
                immediate_unbound = True
        reasons: Counter[str] = Counter()
        feasible = []
        for node in nodes:
            reason = UNBOUND_IMMEDIATE if immediate_unbound else self._filter(pod, node, bound_pvs)
            if reason is None:
                feasible.append(node)
            else:
                reasons[reason] += 1
        if not feasible:
            listed = ", ".join(sorted(f"{count} {reason}" for reason, count in reasons.items()))
            self._unschedulable(
                pod, f"0/{len(nodes)} nodes are available: {listed}." if nodes else "no nodes available"
            )
            return
        names = [meta(n)["name"] for n in feasible]
        chosen = self._assumed.get(m["uid"])
        for claim in waiting:
            node_name = annotations_of(claim).get(SELECTED_NODE)
            if chosen is None and node_name in names:
                chosen = node_name
        if chosen is None or chosen not in names:
            load = Counter(spec(p).get("nodeName") for p in pods if phase(p) not in TERMINATED)
            load.update(self._assumed.values())
            chosen = min(names, key=lambda n: (load[n], n))
        if waiting:
            self._assumed[m["uid"]] = chosen
            for claim in waiting:
                if annotations_of(claim).get(SELECTED_NODE) != chosen:
                    patch = {"metadata": {"annotations": {SELECTED_NODE: chosen}}}
                    kube.patch("persistentvolumeclaims", meta(claim)["name"], patch, namespace)
            return
        self._assumed.pop(m["uid"], None)
        condition = {"type": "PodScheduled", "status": "True"}
        conditions = with_condition(status(pod).get("conditions") or [], condition) or status(pod).get("conditions")
        kube.patch("pods", m["name"], {"spec": {"nodeName": chosen}, "status": {"conditions": conditions}}, namespace)

    def _filter(self, pod: Obj, node: Obj, bound_pvs: list[Obj]) -> str | None:
        """Why the pod cannot run on ``node`` (the first failing filter, in the real scheduler's order)."""
        if spec(node).get("unschedulable"):
            return UNSCHEDULABLE
        for taint in spec(node).get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerated(
                taint, spec(pod).get("tolerations") or []
            ):
                return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"
        selector = spec(pod).get("nodeSelector") or {}
        if any(labels(node).get(k) != v for k, v in selector.items()):
            return AFFINITY
        affinity = (spec(pod).get("affinity") or {}).get("nodeAffinity") or {}
        if not node_selector_matches(affinity.get("requiredDuringSchedulingIgnoredDuringExecution"), node):
            return AFFINITY
        if not all(pv_allows_node(pv, node) for pv in bound_pvs):
            return VOLUME_AFFINITY
        return None

    def _unschedulable(self, pod: Obj, message: str) -> None:
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        conditions = with_condition(status(pod).get("conditions") or [], condition)
        if conditions is not None:
            self.sim.kube.patch(
                "pods", meta(pod)["name"], {"status": {"conditions": conditions}}, meta(pod)["namespace"]
            )
