"""Velero's side of a restore with a third-party data mover, replayed step for step as its code does it
(Velero 1.18: ``pkg/restore/actions/csi/pvc_action.go`` ``restoreFromDataUploadResult``/``newDataDownload``,
``Progress``; ``pkg/controller/restore_finalizer_controller.go``), against the test API server.

    1. the DataDownload is created first (generateName ``<restore>-``, owned by the Restore, Velero's labels),
    2. then the application's PVC: ``spec.volumeName`` cleared, a ``velero.io/dynamic-pv-restore`` selector,
    3. then the workload pod that mounts it.

``progress`` computes what Velero's restore controller shows for the operation (``OperationProgress``), and
``finalizer_satisfied`` what its restore finalizer waits for before the restore can complete. The
DataUploadResult ConfigMap Velero keeps during the restore is not replayed: no data mover reads it.

``world`` runs that against the simulated cluster (tests/support/sim) with a Ferry agent per node.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.app import Agent
from agent.settings import AgentSettings
from tests.support.cluster import Cluster, agent_settings, running_agent
from tests.support.kube import KubeServer
from tests.support.sim import SimCluster

NS = "velero"
NODES = ["node-a", "node-b", "node-c"]
IMAGE = "ghcr.io/ferry-project/ferry:test"
DYNAMIC_PV_RESTORE = "velero.io/dynamic-pv-restore"
FINALIZER = "ferry.dev/cleanup"
SNAPSHOT_CLASS = "ferry-snapclass"
Obj = dict[str, Any]


@dataclass(frozen=True)
class Restore:
    """One ``velero restore create`` of one PVC."""

    name: str
    uid: str
    operation_id: str
    pvc_namespace: str
    pvc: str
    selector_value: str
    datadownload: str = ""


def start_restore(
    kube: KubeServer,
    *,
    snapshot_id: str,
    snapshot_size: int = 0,
    namespace: str = "app",
    pvc: str = "data",
    storage_class: str = "wffc",
    size: str = "256Mi",
    volume_mode: str = "Filesystem",
    bsl: str = "default",
    source_namespace: str | None = None,
    datamover: str = "ferry",
    operation_timeout: str = "10m0s",
    version: str = "1.18",
    restore_name: str = "restore-1",
    pvc_annotations: dict[str, str] | None = None,
) -> Restore:
    """Steps 1 and 2: the DataDownload, then the Pending PVC with Velero's selector (by default PVC
    ``app/data`` of the WaitForFirstConsumer class ``wffc``; ``snapshot_size`` is only what Velero 1.18
    puts in ``spec.snapshotSize``, which Ferry does not read)."""
    restore_uid = str(uuid.uuid4())
    operation_id = f"dd-{uuid.uuid4()}.{uuid.uuid4().hex[:8]}"
    selector = f"{namespace}.{pvc}.{uuid.uuid4().hex[:5]}"
    spec: Obj = {
        "targetVolume": {"pvc": pvc, "pv": "", "namespace": namespace},
        "backupStorageLocation": bsl,
        "datamover": datamover,
        "snapshotID": snapshot_id,
        "sourceNamespace": source_namespace or namespace,
        "operationTimeout": operation_timeout,
    }
    if version >= "1.16":
        spec["nodeOS"] = "linux"
    if version >= "1.18":
        spec["snapshotSize"] = snapshot_size
    dd = kube.create(
        "datadownloads",
        {
            "apiVersion": "velero.io/v2alpha1",
            "kind": "DataDownload",
            "metadata": {
                "generateName": f"{restore_name}-",
                "namespace": NS,
                "labels": {
                    "velero.io/restore-name": restore_name,
                    "velero.io/restore-uid": restore_uid,
                    "velero.io/async-operation-id": operation_id,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "velero.io/v1",
                        "kind": "Restore",
                        "name": restore_name,
                        "uid": restore_uid,
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
        },
        namespace=NS,
    )
    if kube.get("namespaces", namespace) is None:
        kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    metadata: Obj = {"name": pvc, "namespace": namespace, "labels": {"velero.io/restore-name": restore_name}}
    if pvc_annotations:
        metadata["annotations"] = pvc_annotations
    kube.create(
        "persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata,
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "volumeMode": volume_mode,
                "resources": {"requests": {"storage": size}},
                "selector": {"matchLabels": {DYNAMIC_PV_RESTORE: selector}},
            },
        },
        namespace=namespace,
    )
    return Restore(restore_name, restore_uid, operation_id, namespace, pvc, selector, dd["metadata"]["name"])


def start_workload(
    kube: KubeServer, restore: Restore, *, block: bool = False, name: str = "db-0", node: str = ""
) -> str:
    """Step 3: the application's pod, mounting the restored PVC (pinned to ``node`` by a selector if given)."""
    container: Obj = {"name": "db", "image": "postgres:16"}
    if block:
        container["volumeDevices"] = [{"name": "data", "devicePath": "/dev/data"}]
    else:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/var/lib/data"}]
    spec: Obj = {
        "containers": [container],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": restore.pvc}}],
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    kube.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": restore.pvc_namespace},
            "spec": spec,
        },
        namespace=restore.pvc_namespace,
    )
    return name


def datadownload(kube: KubeServer, restore: Restore) -> Obj:
    """The DataDownload, found as Velero finds it: by label ``velero.io/async-operation-id``."""
    found = [
        dd
        for dd in kube.list("datadownloads", namespace=NS)
        if (dd["metadata"].get("labels") or {}).get("velero.io/async-operation-id") == restore.operation_id
    ]
    assert len(found) == 1, f"{len(found)} DataDownloads carry operation {restore.operation_id}"
    return found[0]


def progress(dd: Obj) -> Obj:
    """Velero's ``OperationProgress`` for a DataDownload or a DataUpload (the restore's and the backup's
    ``pvc_action.go`` ``Progress`` compute it alike)."""
    status = dd.get("status") or {}
    phase = status.get("phase") or ""
    if phase in ("", "New"):
        return {"completed": False}
    figures = status.get("progress") or {}
    out: Obj = {
        "description": phase,
        "operationUnits": "Bytes",
        "nCompleted": figures.get("bytesDone", 0),
        "nTotal": figures.get("totalBytes", 0),
        "started": status.get("startTimestamp"),
        "updated": status.get("completionTimestamp"),
        "completed": phase in ("Completed", "Canceled", "Failed"),
    }
    if phase == "Canceled":
        out["err"] = f"{dd.get('kind', 'DataDownload')} is canceled"
    elif phase == "Failed":
        out["err"] = status.get("message", "")
    return out


def finalizer_satisfied(kube: KubeServer, restore: Restore) -> bool:
    """What Velero's restore finalizer waits for: the PVC Bound, and its PV bound to it."""
    pvc = kube.get("persistentvolumeclaims", restore.pvc, namespace=restore.pvc_namespace)
    if pvc is None or (pvc.get("status") or {}).get("phase") != "Bound":
        return False
    pv = kube.get("persistentvolumes", pvc["spec"].get("volumeName") or "")
    if pv is None or (pv.get("status") or {}).get("phase") != "Bound":
        return False
    ref = pv["spec"].get("claimRef") or {}
    return (ref.get("namespace"), ref.get("name"), ref.get("uid")) == (
        restore.pvc_namespace,
        restore.pvc,
        pvc["metadata"]["uid"],
    )


# --- the world: simulated cluster, Velero's objects, Ferry's agents -----------------------------------


@dataclass
class World:
    cluster: Cluster
    sim: SimCluster
    agents: dict[str, Agent]

    def settings(self, node: str, **overrides: Any) -> AgentSettings:
        values: dict[str, Any] = {"kubelet_root": str(self.sim.kubelet_root(node)), "pod_image": IMAGE}
        return agent_settings(self.cluster, node, **(values | overrides))


@asynccontextmanager
async def world(
    cluster: Cluster,
    tmp_path: Path,
    nodes: list[str] = NODES,
    agents: list[str] | None = None,
    **agent: Any,
) -> AsyncIterator[World]:
    """The simulated cluster with classes ``immediate`` and ``wffc`` (reclaim Delete), the default
    VolumeSnapshotClass ``ferry-snapclass`` (deletion policy Delete) where the server serves CSI snapshots,
    and an agent on each of ``agents`` (default: every node) with the ``agent`` settings."""
    async with SimCluster(cluster.kube, tmp_path / "sim", nodes) as sim, AsyncExitStack() as stack:
        sim.add_storage_class("immediate", binding="Immediate")
        sim.add_storage_class("wffc", binding="WaitForFirstConsumer")
        if any(t.plural == "volumesnapshotclasses" for t in cluster.kube.types):
            sim.add_snapshot_class(SNAPSHOT_CLASS, deletion="Delete", default=True)
        w = World(cluster, sim, {})
        for node in nodes if agents is None else agents:
            w.agents[node] = await stack.enter_async_context(running_agent(w.settings(node, **agent)))
        yield w


async def wait_done(cluster: Cluster, restore: Restore, timeout: float = 60.0) -> Obj:
    return await cluster.wait_phase(restore.datadownload, "Completed", "Failed", "Canceled", timeout=timeout)


async def wait_running(cluster: Cluster, namespace: str, pod: str, timeout: float = 30.0) -> Obj:
    return await cluster.kube.wait_for(
        "pods",
        pod,
        namespace,
        lambda p: p is not None and p.get("status", {}).get("phase") == "Running",
        timeout=timeout,
    )


async def wait_released(cluster: Cluster, restore: Restore, timeout: float = 30.0) -> None:
    """Until the DataDownload no longer carries Ferry's finalizer (or is gone)."""
    await cluster.kube.wait_for(
        "datadownloads",
        restore.datadownload,
        NS,
        lambda dd: dd is None or FINALIZER not in (dd["metadata"].get("finalizers") or []),
        timeout=timeout,
    )


def assert_nothing_left(cluster: Cluster, restore: Restore) -> None:
    """No restore pod or PVC, no PV but the one the application's PVC names, no finalizer of ours."""
    kube = cluster.kube
    assert kube.get("pods", restore.datadownload, namespace=NS) is None, "restore pod left behind"
    assert kube.get("persistentvolumeclaims", restore.datadownload, namespace=NS) is None, "restore PVC left behind"
    dd = kube.get("datadownloads", restore.datadownload, namespace=NS)
    if dd is not None:
        assert FINALIZER not in (dd["metadata"].get("finalizers") or [])
    target = kube.get("persistentvolumeclaims", restore.pvc, namespace=restore.pvc_namespace)
    kept = (target or {}).get("spec", {}).get("volumeName")
    stray = [pv["metadata"]["name"] for pv in kube.list("persistentvolumes") if pv["metadata"]["name"] != kept]
    assert stray == [], f"PVs left behind: {stray}"


async def cleaned_up(w: World, restore: Restore) -> None:
    """Wait until the DataDownload carries no finalizer of Ferry's and the cluster has settled, then assert
    that nothing of the restore is left (``assert_nothing_left``)."""
    await wait_released(w.cluster, restore)
    await w.sim.settled()
    assert_nothing_left(w.cluster, restore)


async def handed_over(w: World, restore: Restore, pod: str) -> Path:
    """Wait until the application's PVC and its PV are bound to each other (what Velero's restore finalizer
    waits for) and the application's ``pod`` runs; then assert that nothing of the restore is left and that
    the PV's reclaim policy is back to its class's (Delete). Returns the volume as the pod sees it."""
    kube = w.cluster.kube
    await kube.wait_for(
        "persistentvolumeclaims", restore.pvc, restore.pvc_namespace, lambda _: finalizer_satisfied(kube, restore)
    )
    await wait_running(w.cluster, restore.pvc_namespace, pod)
    await w.sim.settled()
    assert_nothing_left(w.cluster, restore)
    claim = kube.get("persistentvolumeclaims", restore.pvc, namespace=restore.pvc_namespace)
    assert claim is not None
    pv = kube.get("persistentvolumes", claim["spec"]["volumeName"])
    assert pv is not None
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    return w.sim.pod_volume(restore.pvc_namespace, pod, restore.pvc)
