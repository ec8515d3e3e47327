"""The kubelet of one node: mounts the CSI volumes of its pods in the kubelet's layout, runs them (or fails
them as the test asks), and finishes the graceful deletion of terminating pods."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.kube import KubeError
from tests.support.kube.meta import now_rfc3339

from .objects import TERMINATED, Obj, claim_names, meta, phase, pv_allows_node, spec, status, terminating, volume_mode

if TYPE_CHECKING:
    from .cluster import SimCluster

CSI = "kubernetes.io~csi"


@dataclass(frozen=True)
class Mount:
    claim: str
    pv: str
    path: Path
    """The mounted directory (``.../volumes/kubernetes.io~csi/<pv>/mount``) or the device link
    (``.../volumeDevices/kubernetes.io~csi/<pv>``)."""
    device: str | None = None
    """The loop device of a Block volume."""


def _losetup(*args: str) -> str:
    done = subprocess.run(["losetup", *args], check=True, capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


class Kubelet:
    def __init__(self, sim: SimCluster, node: str) -> None:
        self.sim = sim
        self.node = node
        self.name = f"kubelet {node}"
        self.root = sim.kubelet_root(node)
        self.mounts: dict[str, list[Mount]] = {}  # pod uid -> its mounted volumes

    async def step(self) -> None:
        pods = [p for p in self.sim.kube.list("pods") if spec(p).get("nodeName") == self.node]
        present = {meta(p)["uid"] for p in pods}
        for uid in list(self.mounts):
            if uid not in present:  # deleted at once (grace period 0) by someone else
                self._unmount(uid)
                shutil.rmtree(self.root / "pods" / uid, ignore_errors=True)
        for pod in pods:
            self._sync(pod)

    def _sync(self, pod: Obj) -> None:
        kube, m = self.sim.kube, meta(pod)
        uid, namespace, name = m["uid"], m["namespace"], m["name"]
        if terminating(pod):
            self._unmount(uid)
            shutil.rmtree(self.root / "pods" / uid, ignore_errors=True)
            if m.get("deletionGracePeriodSeconds") != 0:
                try:
                    kube.delete("pods", name, namespace, grace_period_seconds=0)
                except KubeError as error:
                    if error.code != 404:
                        raise
            return
        if phase(pod) in TERMINATED:
            self._unmount(uid)
            return
        failure = self.sim.failed_pods.get((namespace, name))
        if failure is not None:
            self._unmount(uid)
            self._write(pod, self._failed_status(pod, failure))
            return
        if uid not in self.mounts:
            mounts = self._mount(pod)
            if mounts is None:
                return  # waits (ContainerCreating) for its volumes
            self.mounts[uid] = mounts
        containers = spec(pod).get("containers") or []
        if any(c.get("image") in self.sim.failed_images for c in containers):
            self._write(pod, self._pull_failed_status(pod))
        elif phase(pod) != "Running":
            self._write(pod, self._running_status(pod))

    def _write(self, pod: Obj, wanted: Obj) -> None:
        current = status(pod)
        if any(current.get(k) != v for k, v in wanted.items() if k not in ("conditions", "startTime")):
            self.sim.kube.patch("pods", meta(pod)["name"], {"status": wanted}, meta(pod)["namespace"])

    # -- volumes ---------------------------------------------------------------------------------
    def _mount(self, pod: Obj) -> list[Mount] | None:
        """Every PVC volume of the pod put in place, or None (nothing done) while one is not ready here."""
        kube, namespace = self.sim.kube, meta(pod)["namespace"]
        node = kube.get("nodes", self.node)
        plan: dict[str, tuple[str, Obj]] = {}
        for claim_name in claim_names(pod):
            claim = kube.get("persistentvolumeclaims", claim_name, namespace)
            if claim is None or phase(claim) != "Bound":
                return None
            pv = kube.get("persistentvolumes", spec(claim).get("volumeName") or "")
            if pv is None or node is None or not pv_allows_node(pv, node):
                return None
            pv_name = meta(pv)["name"]
            driver = (spec(pv).get("csi") or {}).get("driver")
            if driver != self.sim.PROVISIONER or pv_name in self.sim.in_use or not self.sim.backing(pv_name).exists():
                return None
            plan.setdefault(pv_name, (claim_name, pv))
        mounts = []
        for pv_name, (claim_name, pv) in plan.items():
            mounts.append(self._attach(meta(pod)["uid"], claim_name, pv))
            self.sim.in_use[pv_name] = meta(pod)["uid"]
        return mounts

    def _attach(self, uid: str, claim: str, pv: Obj) -> Mount:
        name = meta(pv)["name"]
        backing = self.sim.backing(name)
        base = self.root / "pods" / uid
        if volume_mode(pv) == "Block":
            link = base / "volumeDevices" / CSI / name
            link.parent.mkdir(parents=True, exist_ok=True)
            device = _losetup("--find", "--show", str(backing))
            os.symlink(device, link)
            return Mount(claim, name, link, device)
        target = base / "volumes" / CSI / name / "mount"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(backing, target)
        csi = spec(pv).get("csi") or {}
        volume_data = {
            "driverName": csi.get("driver"),
            "volumeHandle": csi.get("volumeHandle"),
            "specVolID": name,
            "volumeLifecycleMode": "Persistent",
        }
        (target.parent / "vol_data.json").write_text(json.dumps(volume_data))
        return Mount(claim, name, target)

    def _unmount(self, uid: str) -> None:
        for mount in self.mounts.pop(uid, []):
            if mount.device is not None:
                mount.path.unlink(missing_ok=True)
                _losetup("--detach", mount.device)
            else:
                os.rename(mount.path, self.sim.backing(mount.pv))
                shutil.rmtree(mount.path.parent)
            self.sim.in_use.pop(mount.pv, None)

    def unmount_all(self) -> None:
        for uid in list(self.mounts):
            self._unmount(uid)

    # -- pod status ------------------------------------------------------------------------------
    def _host_ip(self) -> str:
        return f"10.0.0.{self.sim.nodes.index(self.node) + 1}"

    def _running_status(self, pod: Obj) -> Obj:
        now = now_rfc3339()
        kinds = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
        conditions = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now} for t in kinds]
        containers = [
            {
                "name": c.get("name"),
                "image": c.get("image"),
                "imageID": f"{c.get('image')}@sha256:{uuid.uuid5(uuid.NAMESPACE_URL, str(c.get('image'))).hex * 2}",
                "containerID": f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in spec(pod).get("containers") or []
        ]
        return {
            "phase": "Running",
            "conditions": conditions,
            "containerStatuses": containers,
            "hostIP": self._host_ip(),
            "podIP": f"10.244.{self.sim.nodes.index(self.node) + 1}.{len(self.sim.in_use) + 2}",
            "startTime": now,
            "qosClass": "BestEffort",
        }

    def _pull_failed_status(self, pod: Obj) -> Obj:
        containers = []
        for c in spec(pod).get("containers") or []:
            image = c.get("image")
            if image in self.sim.failed_images:
                waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
            else:
                waiting = {"reason": "ContainerCreating"}
            containers.append(
                {
                    "name": c.get("name"),
                    "image": image,
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": waiting},
                }
            )
        ready = {
            "type": "Ready",
            "status": "False",
            "reason": "ContainersNotReady",
            "lastTransitionTime": now_rfc3339(),
        }
        return {"phase": "Pending", "containerStatuses": containers, "conditions": [ready], "hostIP": self._host_ip()}

    def _failed_status(self, pod: Obj, message: str) -> Obj:
        now = now_rfc3339()
        containers = [
            {
                "name": c.get("name"),
                "image": c.get("image"),
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now}},
            }
            for c in spec(pod).get("containers") or []
        ]
        ready = {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now}
        return {
            "phase": "Failed",
            "reason": "Error",
            "message": message,
            "containerStatuses": containers,
            "conditions": [ready],
        }
