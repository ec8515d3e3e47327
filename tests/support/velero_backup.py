"""Velero's side of a backup with a third-party data mover, replayed step for step as its code does it
(Velero 1.18: ``pkg/backup/actions/csi/pvc_action.go`` ``Execute``/``newDataUpload``/``Progress``), and the
restore of what it stored as Velero derives it (``pkg/restore/actions/csi/pvc_action.go``: the DataDownload
takes the DataUpload's ``status.snapshotID``, ``progress.totalBytes`` and ``sourceNamespace``).

    1. a VolumeSnapshot ``velero-<pvc>-xxxxx`` of the application's PVC, in its namespace, of the
       VolumeSnapshotClass for its driver,
    2. Velero waits until its content has a snapshot handle,
    3. the DataUpload (generateName ``<backup>-``, owned by the Backup, Velero's labels), then the PVC is
       annotated with the DataUpload's name.

``app`` makes the application those run against: a PVC and a pod that mounts it, with known data.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.pipeline.restore import restore
from agent.repo.config import open_repository
from agent.settings import RestoreSettings, S3Settings
from agent.storage.s3 import S3Storage
from agent.storage.url import velero_repository_prefix
from tests.support.cluster import REPOSITORY_PASSWORD, Cluster
from tests.support.faulty_proxy import FaultyProxy
from tests.support.kube import KubeServer
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY
from tests.support.sim import SimCluster
from tests.support.velero import NS, SNAPSHOT_CLASS, Obj, Restore, start_restore

VS, VSC = "volumesnapshots", "volumesnapshotcontents"
FINALIZER = "ferry.dev/cleanup"


@dataclass(frozen=True)
class Backup:
    """One ``velero backup create --snapshot-move-data --data-mover ferry`` of one PVC."""

    name: str
    uid: str
    operation_id: str
    namespace: str
    pvc: str
    volume_snapshot: str
    dataupload: str


def ensure_namespace(kube: KubeServer, namespace: str) -> None:
    if kube.get("namespaces", namespace) is None:
        kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})


def start_app(
    kube: KubeServer,
    *,
    namespace: str = "app",
    pvc: str = "data",
    storage_class: str = "immediate",
    size: str = "64Mi",
    block: bool = False,
    pod: str = "db-0",
    node: str = "",
) -> None:
    """The application: PVC ``namespace/pvc`` and pod ``pod`` mounting it (pinned to ``node`` if given)."""
    ensure_namespace(kube, namespace)
    kube.create(
        "persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": pvc, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "volumeMode": "Block" if block else "Filesystem",
                "resources": {"requests": {"storage": size}},
            },
        },
        namespace=namespace,
    )
    container: Obj = {"name": "db", "image": "postgres:16"}
    if block:
        container["volumeDevices"] = [{"name": "data", "devicePath": "/dev/data"}]
    else:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/var/lib/data"}]
    spec: Obj = {"containers": [container], "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    kube.create(
        "pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": namespace}, "spec": spec},
        namespace=namespace,
    )


def exact_copy(source: Path, target: Path) -> Path:
    """An exact copy (owners, modes, times, links, xattrs) to compare a backup or restore with."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


def file_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root``, a hardlinked file once (what a snapshot's size counts)."""
    files = {
        (p.lstat().st_dev, p.lstat().st_ino): p.lstat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    return sum(files.values())


async def sample_app(sim: SimCluster, *, node: str = "", **app: object) -> Path:
    """``start_app`` with a little data in its volume (a text file, a binary file in a directory)."""
    start_app(sim.kube, node=node, **app)  # type: ignore[arg-type]
    where = {k: v for k, v in app.items() if k in ("namespace", "pvc", "pod")}
    volume = await app_volume(sim, **where)  # type: ignore[arg-type]
    (volume / "note.txt").write_text("backed up by ferry\n")
    (volume / "dir").mkdir()
    (volume / "dir" / "data.bin").write_bytes(bytes(range(256)) * 4096)
    return volume


async def app_volume(sim: SimCluster, *, namespace: str = "app", pvc: str = "data", pod: str = "db-0") -> Path:
    """The application's volume as its running pod sees it (a directory, or the block device)."""
    await sim.kube.wait_for(
        "pods", pod, namespace, lambda p: p is not None and (p.get("status") or {}).get("phase") == "Running"
    )
    return sim.pod_volume(namespace, pod, pvc)


def write_block(device: Path, data: bytes, offset: int = 0) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_block(device: Path, length: int, offset: int = 0) -> bytes:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


async def start_backup(
    kube: KubeServer,
    *,
    namespace: str = "app",
    pvc: str = "data",
    backup_name: str = "backup-1",
    snapshot_class: str = SNAPSHOT_CLASS,
    bsl: str = "default",
    datamover: str = "ferry",
    operation_timeout: str = "10m0s",
    version: str = "1.18",
    config: dict[str, str] | None = None,
    wait_handle: bool = True,
    backup_uid: str = "",
) -> Backup:
    """Steps 1–3. ``wait_handle=False`` creates the DataUpload without waiting for the snapshot (Velero
    always waits; tests of a snapshot that is not ready yet use it)."""
    claim = kube.get("persistentvolumeclaims", pvc, namespace=namespace)
    assert claim is not None, f"no PVC {namespace}/{pvc}"
    backup_uid = backup_uid or str(uuid.uuid4())  # a Backup object's UID, when the test made one
    vs = kube.create(
        VS,
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {
                "generateName": f"velero-{pvc}-",
                "namespace": namespace,
                "labels": {"velero.io/backup-name": backup_name},
            },
            "spec": {"source": {"persistentVolumeClaimName": pvc}, "volumeSnapshotClassName": snapshot_class},
        },
        namespace=namespace,
    )
    vs_name = vs["metadata"]["name"]
    driver = ""
    if wait_handle:
        bound = await kube.wait_for(
            VS, vs_name, namespace, lambda v: bool(v and (v.get("status") or {}).get("boundVolumeSnapshotContentName"))
        )
        content = bound["status"]["boundVolumeSnapshotContentName"]
        vsc = await kube.wait_for(
            VSC, content, None, lambda c: bool(c and (c.get("status") or {}).get("snapshotHandle"))
        )
        driver = vsc["spec"]["driver"]
    operation_id = f"du-{uuid.uuid4()}.{uuid.uuid4().hex[:8]}"
    csi: Obj = {"volumeSnapshot": vs_name, "storageClass": claim["spec"]["storageClassName"]}
    if snapshot_class:
        csi["snapshotClass"] = snapshot_class
    if version >= "1.17":
        csi["driver"] = driver or "csi.ferry.test"
    spec: Obj = {
        "snapshotType": "CSI",
        "csiSnapshot": csi,
        "sourcePVC": pvc,
        "datamover": datamover,
        "backupStorageLocation": bsl,
        "sourceNamespace": namespace,
        "operationTimeout": operation_timeout,
    }
    if config:
        spec["dataMoverConfig"] = config
    du = kube.create(
        "datauploads",
        {
            "apiVersion": "velero.io/v2alpha1",
            "kind": "DataUpload",
            "metadata": {
                "generateName": f"{backup_name}-",
                "namespace": NS,
                "labels": {
                    "velero.io/backup-name": backup_name,
                    "velero.io/backup-uid": backup_uid,
                    "velero.io/pvc-uid": claim["metadata"]["uid"],
                    "velero.io/async-operation-id": operation_id,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "velero.io/v1",
                        "kind": "Backup",
                        "name": backup_name,
                        "uid": backup_uid,
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
        },
        namespace=NS,
    )
    name = du["metadata"]["name"]
    kube.patch(
        "persistentvolumeclaims", pvc, {"metadata": {"annotations": {"velero.io/data-upload-name": name}}}, namespace
    )
    return Backup(backup_name, backup_uid, operation_id, namespace, pvc, vs_name, name)


async def start_held_backup(kube: KubeServer, proxy: FaultyProxy, bsl: str, **backup: object) -> Backup:
    """``start_backup`` into BSL ``bsl`` (reached through ``proxy``) whose uploads ``proxy`` holds; return once
    it is InProgress and an upload is being held (``proxy.released`` lets them go)."""
    proxy.stall_puts = True
    started = await start_backup(kube, bsl=bsl, **backup)  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        await proxy.holding.wait()
    return started


def dataupload(kube: KubeServer, backup: Backup) -> Obj:
    """The DataUpload, found as Velero finds it: by label ``velero.io/async-operation-id``."""
    found = [
        du
        for du in kube.list("datauploads", namespace=NS)
        if (du["metadata"].get("labels") or {}).get("velero.io/async-operation-id") == backup.operation_id
    ]
    assert len(found) == 1, f"{len(found)} DataUploads carry operation {backup.operation_id}"
    return found[0]


def restore_of(kube: KubeServer, du: Obj, **restore: object) -> Restore:
    """The restore of the DataUpload's PVC as Velero builds it from the DataUploadResult: the DataDownload's
    snapshot ID, size and source namespace are the DataUpload's (``restore`` overrides the rest)."""
    status = du["status"]
    values: dict[str, object] = {
        "snapshot_id": status["snapshotID"],
        "snapshot_size": status["progress"]["totalBytes"],
        "source_namespace": du["spec"]["sourceNamespace"],
        "namespace": du["spec"]["sourceNamespace"],
        "pvc": du["spec"]["sourcePVC"],
    } | restore
    return start_restore(kube, **values)  # type: ignore[arg-type]


async def wait_ended(kube: KubeServer, backup: Backup, timeout: float = 60.0) -> Obj:
    return await kube.wait_for(
        "datauploads",
        backup.dataupload,
        NS,
        lambda du: du is not None and (du.get("status") or {}).get("phase") in ("Completed", "Failed", "Canceled"),
        timeout=timeout,
    )


async def released(kube: KubeServer, backup: Backup, timeout: float = 30.0) -> None:
    """Until the DataUpload no longer carries Ferry's finalizer, or is gone."""

    def ready() -> bool:
        du = kube.get("datauploads", backup.dataupload, namespace=NS)
        return du is None or FINALIZER not in (du["metadata"].get("finalizers") or [])

    async with asyncio.timeout(timeout):
        while True:
            changed = kube.store.next_change()
            if ready():
                return
            await changed.wait()


def snapshot_objects(kube: KubeServer) -> list[str]:
    """Every VolumeSnapshot (namespace/name) and VolumeSnapshotContent (name) in the cluster."""
    return [f"{v['metadata']['namespace']}/{v['metadata']['name']}" for v in kube.list(VS)] + [
        c["metadata"]["name"] for c in kube.list(VSC)
    ]


async def backup_cleaned_up(sim: SimCluster, backup: Backup, timeout: float = 30.0) -> None:
    """Wait until the DataUpload carries no finalizer of Ferry's (or is gone) and the cluster has settled;
    then assert that nothing of the backup is left: no backup pod, PVC or PV, no VolumeSnapshot or content
    anywhere, no storage snapshot."""
    kube = sim.kube
    await released(kube, backup, timeout)
    await sim.settled()
    assert kube.get("pods", backup.dataupload, namespace=NS) is None, "backup pod left behind"
    assert kube.get("persistentvolumeclaims", backup.dataupload, namespace=NS) is None, "backup PVC left behind"
    claims = {
        (pvc["metadata"]["namespace"], pvc["metadata"]["name"]): pvc["spec"].get("volumeName")
        for pvc in kube.list("persistentvolumeclaims")
    }
    stray = [
        pv["metadata"]["name"] for pv in kube.list("persistentvolumes") if pv["metadata"]["name"] not in claims.values()
    ]
    assert stray == [], f"PVs left behind: {stray}"
    assert snapshot_objects(kube) == [], "VolumeSnapshots or contents left behind"
    assert sim.storage_snapshots() == set(), "storage snapshots left behind"


def cluster_s3(cluster: Cluster) -> S3Settings:
    """S3 settings for the cluster's bucket, as the command line reaches it (no cluster)."""
    return S3Settings(
        endpoint_url=cluster.endpoint,
        region="us-east-1",
        path_style=True,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )


async def stored_tree(cluster: Cluster, du: Obj, target: Path) -> Path:
    """Restore the DataUpload's snapshot straight from the repository into ``target`` (no cluster): what
    the backup stored, to compare with what the volume held."""
    prefix = velero_repository_prefix("backups", du["spec"]["sourceNamespace"])
    storage = await S3Storage.open(cluster_s3(cluster), cluster.bucket, prefix)
    try:
        repo = await open_repository(storage, None, REPOSITORY_PASSWORD)
        await restore(repo, du["status"]["snapshotID"], str(target), RestoreSettings())
    finally:
        await storage.aclose()
    return target
