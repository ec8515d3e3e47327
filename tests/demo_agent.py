"""The node agent part of ``make demo``: the whole Velero cycle with ``--data-mover ferry``, replayed as
Velero creates its objects, on the tests' simulated cluster (strict API server, provisioner, PV binder,
scheduler, kubelet, CSI snapshots, namespace deletion), served by ``ferry agent`` in a separate process as
the DaemonSet runs it, under the least privileges of ``daemonset/rbac.yaml``.

Backup: an application's PVC holds the demo's sample tree; Velero snapshots it (a VolumeSnapshot) and
creates a DataUpload; Ferry moves the snapshot into Velero's namespace, backs the volume up into the
demo's SeaweedFS server and cleans everything up. Then the application's namespace is deleted. Restore:
Velero creates a DataDownload with the DataUpload's snapshot ID and a Pending PVC (no provisioner binds a
claim with Velero's selector); Ferry exposes a volume, restores into it, hands it to the PVC, and the
application's pod starts on it with its data back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.agent_fixtures import agent_kubeconfig
from tests.support.cluster import NS, Cluster
from tests.support.data import tree_differences
from tests.support.kube import KubeServer, velero_crds
from tests.support.kube.snapshot_crds import snapshot_crds
from tests.support.sim import SimCluster
from tests.support.velero import IMAGE, SNAPSHOT_CLASS, finalizer_satisfied, start_workload
from tests.support.velero_backup import app_volume, restore_of, snapshot_objects, start_app, start_backup

ROOT = Path(__file__).resolve().parents[1]
NODE = "demo-node"


def _line(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    progress = status.get("progress") or {}
    text = f"  {obj.get('kind', 'DataDownload'):<12} phase {status.get('phase') or 'New':<10}"
    if "totalBytes" in progress:
        done, total = progress.get("bytesDone", 0), progress["totalBytes"]
        text += f" {done:>11,} / {total:,} bytes ({100 * done / max(total, 1):5.1f}%)"
    if status.get("message"):
        text += f"  {status['message']}"
    return text


def _claim(kube: KubeServer, namespace: str, name: str) -> str:
    pvc = kube.get("persistentvolumeclaims", name, namespace=namespace) or {}
    phase = (pvc.get("status") or {}).get("phase", "?")
    volume = (pvc.get("spec") or {}).get("volumeName")
    return f"PVC {namespace}/{name}: {phase}" + (f", volume {volume}" if volume else ", no volume")


async def run_agent_demo(endpoint: str, bucket: str, tree: Path, work: Path) -> None:
    async with KubeServer(velero_crds() + snapshot_crds()) as kube:
        kube.create("namespaces", {"metadata": {"name": NS}})
        cluster = Cluster(kube, work / "kubelet", agent_kubeconfig(kube, work / "kubeconfig"), bucket, endpoint)
        cluster.add_credentials_secret()
        cluster.add_repository_secret()
        cluster.add_bsl(prefix="velero", credential={"name": "ferry-credentials", "key": "cloud"})
        async with SimCluster(kube, work / "cluster", [NODE]) as sim:
            sim.add_storage_class("standard", binding="WaitForFirstConsumer")
            sim.add_snapshot_class(SNAPSHOT_CLASS, default=True)
            print(f"  API server {kube.url}; node {NODE}; StorageClass standard (WaitForFirstConsumer);")
            print(f"  VolumeSnapshotClass {SNAPSHOT_CLASS} (Delete); BackupStorageLocation default →")
            print(f"  s3://{bucket}/velero; the agent runs with the RBAC of daemonset/rbac.yaml")
            await _run(cluster, sim, tree, work)


async def _follow(kube: KubeServer, plural: str, name: str) -> dict[str, Any]:
    """Print the object's phase and progress as they change, until a terminal phase."""
    shown = ""
    while True:
        obj = await kube.wait_for(plural, name, NS, lambda o, seen=shown: _line(o) != seen, timeout=300)
        shown = _line(obj)
        print(shown, flush=True)
        if (obj.get("status") or {}).get("phase") in ("Completed", "Failed", "Canceled"):
            return obj


async def _run(cluster: Cluster, sim: SimCluster, tree: Path, work: Path) -> None:
    kube = cluster.kube
    log = work / "agent.log"
    env = dict(os.environ, FERRY_VOLUME_POLL_INTERVAL="0.2", FERRY_POD_IMAGE=IMAGE, PYTHONPATH=str(ROOT))
    args = ["--node-name", NODE, "--kubeconfig", str(cluster.kubeconfig)]
    args += ["--kubelet-root", str(sim.kubelet_root(NODE)), "--http-address", "127.0.0.1", "--http-port", "0"]
    args += ["--progress-interval", "0.2", "--log-format", "text"]
    print(f"$ ferry agent {' '.join(args)}", flush=True)
    with log.open("wb") as err:
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "agent", *args, cwd=ROOT, env=env, stdout=err, stderr=err
        )
    names: list[str] = []
    try:
        await kube.wait_for_watches(1, "datauploads", timeout=60)
        await kube.wait_for_watches(1, "datadownloads", timeout=60)
        print("  the agent is watching DataUploads and DataDownloads")

        print("\n  -- velero backup create demo-backup --snapshot-move-data --data-mover ferry")
        start_app(kube, namespace="demo", storage_class="standard", size="256Mi", pod="app")
        volume = await app_volume(sim, namespace="demo", pod="app")
        subprocess.run(["cp", "-a", f"{tree}/.", str(volume)], check=True)
        print(f"  application pod demo/app writes the sample tree into {_claim(kube, 'demo', 'data')}")
        backup = await start_backup(kube, namespace="demo", backup_name="demo-backup")
        names.append(backup.dataupload)
        print(
            f"  Velero created VolumeSnapshot demo/{backup.volume_snapshot}, then DataUpload {NS}/{backup.dataupload}"
        )
        uploaded = await _follow(kube, "datauploads", backup.dataupload)
        status = uploaded["status"]
        if status["phase"] != "Completed":
            sys.exit(f"FAILED: the DataUpload ended {status['phase']}: {status.get('message')}")
        await sim.settled()
        stored = int(status.get("incrementalBytes", 0))
        print(f"  snapshot ID {status['snapshotID']}; {stored:,} new bytes stored", end="")
        print(" (the same tree's chunks were already there from `ferry snapshot create`)" if not stored else "")
        left = snapshot_objects(kube) + sorted(sim.storage_snapshots())
        print(f"  VolumeSnapshots, contents and storage snapshots left: {', '.join(left) if left else 'none'}")

        print("\n  -- kubectl delete namespace demo")
        kube.delete("namespaces", "demo")
        await kube.wait_gone("namespaces", "demo", None, timeout=60)
        await sim.settled()
        print(f"  namespace demo and its PVC are gone; PersistentVolumes left: {len(kube.list('persistentvolumes'))}")

        print("\n  -- velero restore create --from-backup demo-backup")
        restore = restore_of(kube, uploaded, storage_class="standard", size="256Mi", restore_name="demo-restore")
        name = restore.datadownload
        names.append(name)
        print(f"  Velero created DataDownload {NS}/{name} (snapshot ID from the DataUpload), then PVC demo/data")
        print(f"  with selector velero.io/dynamic-pv-restore={restore.selector_value}, then pod demo/app:")
        pod = start_workload(kube, restore, name="app")
        await sim.settled()
        print(f"  {_claim(kube, 'demo', 'data')} (no provisioner binds a claim with a selector)")
        obj = await _follow(kube, "datadownloads", name)
        status = obj["status"]
        if status["phase"] != "Completed":
            sys.exit(f"FAILED: the DataDownload ended {status['phase']}: {status.get('message')}")
        await kube.wait_for("persistentvolumeclaims", "data", "demo", lambda _: finalizer_satisfied(kube, restore))
        running = await kube.wait_for(
            "pods", pod, "demo", lambda p: p is not None and p["status"].get("phase") == "Running", timeout=30
        )
        print(f"  {_claim(kube, 'demo', 'data')}; pod demo/{pod} Running on {running['spec']['nodeName']}")
        left = [k for k in ("pods", "persistentvolumeclaims") if kube.get(k, name, namespace=NS) is not None]
        print(f"  restore pod and PVC in {NS}: {'left behind: ' + ', '.join(left) if left else 'gone'}")
        diffs = tree_differences(tree, sim.pod_volume("demo", pod, "data"))
        if diffs:
            sys.exit("FAILED: the volume restored by the agent differs:\n  " + "\n  ".join(diffs[:20]))
        print("  the volume as the application's pod sees it: identical to what it held at the backup, entry for entry")
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            await asyncio.wait_for(agent.wait(), 30)
    print(f"\n  the agent stopped on SIGTERM (exit status {agent.returncode}). Events and log lines:")
    for name in names:
        kinds = ("DataUpload", "DataDownload")
        about = [e["reason"] for e in cluster.events_for(name) if e["involvedObject"]["kind"] in kinds]
        print(f"  {name}: {', '.join(about)}")
        for text in log.read_text().splitlines():
            if name in text:
                print(f"    {text}")
