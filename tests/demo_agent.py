"""The node agent part of ``make demo``: a ``velero restore`` with ``--data-mover ferry``, replayed as Velero
creates its objects, on the tests' simulated cluster (strict API server, provisioner, PV binder, scheduler,
kubelet), served by ``ferry agent`` in a separate process as the DaemonSet runs it, under the least
privileges of ``daemonset/rbac.yaml``. The application's PVC starts Pending (no provisioner binds a claim
with Velero's selector); Ferry exposes a volume, restores the demo's repository into it on the local
SeaweedFS server, hands it to the PVC, and the application's pod starts on it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.agent_fixtures import agent_kubeconfig
from tests.support.cluster import NS, Cluster
from tests.support.data import tree_differences
from tests.support.kube import KubeServer, velero_crds
from tests.support.sim import SimCluster
from tests.support.velero import IMAGE, finalizer_satisfied, start_restore, start_workload

ROOT = Path(__file__).resolve().parents[1]
NODE = "demo-node"


def _line(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    progress = status.get("progress") or {}
    text = f"  DataDownload phase {status.get('phase') or 'New':<10}"
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


async def run_agent_demo(endpoint: str, bucket: str, snapshot_id: str, tree: Path, work: Path) -> None:
    async with KubeServer(velero_crds()) as kube:
        kube.create("namespaces", {"metadata": {"name": NS}})
        cluster = Cluster(kube, work / "kubelet", agent_kubeconfig(kube, work / "kubeconfig"), bucket, endpoint)
        cluster.add_credentials_secret()
        cluster.add_bsl(prefix="velero", credential={"name": "ferry-credentials", "key": "cloud"})
        async with SimCluster(kube, work / "cluster", [NODE]) as sim:
            sim.add_storage_class("standard", binding="WaitForFirstConsumer")
            print(f"  API server {kube.url}; node {NODE}; StorageClass standard (WaitForFirstConsumer)")
            print(f"  BackupStorageLocation default → s3://{bucket}/velero; RBAC of daemonset/rbac.yaml")
            await _run(cluster, sim, snapshot_id, tree, work)


async def _run(cluster: Cluster, sim: SimCluster, snapshot_id: str, tree: Path, work: Path) -> None:
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
    try:
        await kube.wait_for_watches(1, "datadownloads", timeout=60)
        print("  the agent is watching DataDownloads")
        restore = start_restore(
            kube,
            snapshot_id=snapshot_id,
            snapshot_size=0,
            namespace="demo",
            pvc="data",
            storage_class="standard",
            restore_name="demo-restore",
        )
        name = restore.datadownload
        print(f"  Velero created DataDownload {NS}/{name} (spec.datamover: ferry), then PVC demo/data with")
        print(f"  selector velero.io/dynamic-pv-restore={restore.selector_value}, then pod demo/app:")
        pod = start_workload(kube, restore, name="app")
        await sim.settled()
        print(f"  {_claim(kube, 'demo', 'data')} (no provisioner binds a claim with a selector)")
        shown = ""
        while True:
            obj = await kube.wait_for("datadownloads", name, NS, lambda o, seen=shown: _line(o) != seen, timeout=300)
            shown = _line(obj)
            print(shown, flush=True)
            if (obj.get("status") or {}).get("phase") in ("Completed", "Failed", "Canceled"):
                break
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
        print("  the volume as the application's pod sees it: identical to the source tree, entry for entry")
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            await asyncio.wait_for(agent.wait(), 30)
    about = [e["reason"] for e in cluster.events_for(name) if e["involvedObject"]["kind"] == "DataDownload"]
    print(f"  the agent stopped on SIGTERM (exit status {agent.returncode}). Events on the DataDownload: ")
    print(f"  {', '.join(about)}; the agent's log lines about it:")
    for text in log.read_text().splitlines():
        if name in text:
            print(f"    {text}")
