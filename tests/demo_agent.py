"""The node agent part of ``make demo``: ``ferry agent`` (a separate process, as the DaemonSet runs it)
against the stand-in Kubernetes API server of the tests, restoring a DataDownload from the demo's
repository on the local SeaweedFS server into a volume in a simulated kubelet root."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.support.cluster import NS, Cluster
from tests.support.data import tree_differences
from tests.support.kube import KubeServer, velero_crds

ROOT = Path(__file__).resolve().parents[1]
NODE = "demo-node"


def _line(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    progress = status.get("progress") or {}
    text = f"  phase {status.get('phase') or 'New':<10}"
    if "totalBytes" in progress:
        done, total = progress.get("bytesDone", 0), progress["totalBytes"]
        text += f" {done:>11,} / {total:,} bytes ({100 * done / max(total, 1):5.1f}%)"
    if status.get("message"):
        text += f"  {status['message']}"
    return text


async def run_agent_demo(endpoint: str, bucket: str, snapshot_id: str, tree: Path, work: Path) -> None:
    async with KubeServer(velero_crds()) as kube:
        kube.create("namespaces", {"metadata": {"name": NS}})
        cluster = Cluster(kube, work / "kubelet", kube.write_kubeconfig(work / "kubeconfig"), bucket, endpoint)
        cluster.kubelet_root.mkdir()
        cluster.add_credentials_secret()
        cluster.add_bsl(prefix="velero", credential={"name": "ferry-credentials", "key": "cloud"})
        [mount] = cluster.add_volume("demo", "data", [NODE])
        print(f"  API server {kube.url}; BackupStorageLocation 'default' → s3://{bucket}/velero (Secret credentials)")
        print(f"  PVC demo/data bound and mounted by a running pod on {NODE}: {mount}")

        log = work / "agent.log"
        env = dict(os.environ, FERRY_VOLUME_POLL_INTERVAL="0.2", PYTHONPATH=str(ROOT))
        args = ["--node-name", NODE, "--kubeconfig", str(cluster.kubeconfig)]
        args += ["--kubelet-root", str(cluster.kubelet_root), "--http-address", "127.0.0.1", "--http-port", "0"]
        args += ["--progress-interval", "0.2", "--log-format", "text"]
        print(f"$ ferry agent {' '.join(args)}", flush=True)
        with log.open("wb") as err:
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "agent", *args, cwd=ROOT, env=env, stdout=err, stderr=err
            )
        try:
            await kube.wait_for_watches(1, "datadownloads", timeout=60)
            print("  the agent is watching DataDownloads")
            cluster.create_dd("demo-restore", snapshot_id, "data", target_namespace="demo", source_namespace="demo")
            print(f"  created DataDownload {NS}/demo-restore (spec.datamover: ferry, snapshot {snapshot_id[:16]}…)")
            shown = ""
            while True:
                obj = await kube.wait_for(
                    "datadownloads", "demo-restore", NS, lambda o, seen=shown: _line(o) != seen, timeout=300
                )
                shown = _line(obj)
                print(shown, flush=True)
                if (obj.get("status") or {}).get("phase") in ("Completed", "Failed", "Canceled"):
                    break
            status = obj["status"]
            if status["phase"] != "Completed":
                sys.exit(f"FAILED: the DataDownload ended {status['phase']}: {status.get('message')}")
        finally:
            if agent.returncode is None:
                agent.send_signal(signal.SIGTERM)
                await asyncio.wait_for(agent.wait(), 30)
        print(f"  the agent stopped on SIGTERM (exit status {agent.returncode})")
        events = ", ".join(e["reason"] for e in cluster.events_for("demo-restore"))
        print(f"  Kubernetes Events on the DataDownload: {events}")
        print("  the agent's log lines about it:")
        for text in log.read_text().splitlines():
            if "demo-restore" in text:
                print(f"    {text}")

    diffs = tree_differences(tree, mount)
    if diffs:
        sys.exit("FAILED: the volume restored by the agent differs:\n  " + "\n  ".join(diffs[:20]))
    print("  the volume restored by the agent: identical to the source tree, entry for entry")
