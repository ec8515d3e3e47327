"""What Velero's restore flow costs around the data: expose, prepare, hand over.

    .venv/bin/python -m bench.velero_flow [--runs 3] [--size-mib 64] [--poll 2]

The same snapshot (a directory holding one file of ``--size-mib`` MiB of mixed data) is restored on the
tests' simulated cluster (strict API server, CSI provisioner, PV binder, scheduler, kubelet; see
tests/support/sim) by one Ferry agent, in process, with the DaemonSet's defaults except
``FERRY_VOLUME_POLL_INTERVAL`` (``--poll``, default the agent's own 2 s), two ways per run:

* **velero**: a DataDownload as Velero creates it, then the Pending PVC with Velero's selector and the
  application's pod (WaitForFirstConsumer class): the agent accepts, exposes a restore PVC and pod,
  prepares, restores, hands the PV over; the clock stops when the application's PVC is Bound to it and
  the DataDownload Completed.
* **in place**: the volume already bound and mounted by a running pod; a DataDownload with
  ``ferry.inPlace``: accept, prepare, restore, Completed.

Each phase is dated by the first stored version of the DataDownload showing it (the API server's store
notes commit times), from the DataDownload's creation. The simulated cluster acts within milliseconds
of each write, so the difference between the two ways is Ferry's own cost: its API round trips and the
waits of its poll interval. A real cluster adds its provisioner's, scheduler's and kubelet's latency.

Writes bench/results/velero-flow.json and prints a table. Needs no root (Filesystem volumes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.backup.writer import create_snapshot
from agent.repo.repository import Repository
from agent.settings import MiB, SnapshotSettings
from agent.storage.s3 import S3Storage
from agent.storage.url import velero_repository_prefix
from bench.first_byte import time_commits
from bench.measure import machine
from bench.workloads import write_mixed_file
from tests.agent_fixtures import agent_kubeconfig
from tests.support.cluster import NS, Cluster, agent_settings, running_agent
from tests.support.kube import KubeServer, velero_crds
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for
from tests.support.sim import SimCluster
from tests.support.velero import IMAGE, finalizer_satisfied, start_restore, start_workload

RESULTS = Path(__file__).resolve().parent / "results" / "velero-flow.json"
MARKS = ("Accepted", "Prepared", "InProgress", "data restored", "Completed")
TIMEOUT_S = 300.0


def marks(kube: KubeServer, name: str, commits: dict[int, float], start: float) -> dict[str, float]:
    """Seconds from ``start`` to the first stored version of DataDownload ``name`` showing each phase, and
    the one recording the data restored (annotation ``ferry.dev/restored-pv``)."""
    out: dict[str, float] = {}
    for revision in kube.history("datadownloads", name, NS):
        if revision.deleted:
            continue
        at = commits[int(revision.object["metadata"]["resourceVersion"])] - start
        out.setdefault((revision.object.get("status") or {}).get("phase") or "New", round(at, 3))
        if "ferry.dev/restored-pv" in (revision.object["metadata"].get("annotations") or {}):
            out.setdefault("data restored", round(at, 3))
    return out


async def one_run(
    server: SeaweedServer, bucket: str, snapshot_id: str, work: Path, way: str, poll: float
) -> dict[str, float]:
    """One restore ``way`` ("velero" or "in place") on a fresh simulated cluster with one agent."""
    async with KubeServer(velero_crds()) as kube:
        commits = time_commits(kube)
        kube.create("namespaces", {"metadata": {"name": NS}})
        cluster = Cluster(kube, work / "kubelet", agent_kubeconfig(kube, work / "kubeconfig"), bucket, server.endpoint)
        cluster.add_credentials_secret()
        cluster.add_bsl(credential={"name": "ferry-credentials", "key": "cloud"})
        async with SimCluster(kube, work / "sim", ["node-a"]) as sim:
            sim.add_storage_class("wffc", binding="WaitForFirstConsumer")
            settings = agent_settings(
                cluster,
                "node-a",
                kubelet_root=str(sim.kubelet_root("node-a")),
                pod_image=IMAGE,
                volume_poll_interval_s=poll,
                progress_interval_s=5.0,
                shutdown_grace_s=20.0,
            )
            async with running_agent(settings):
                if way == "velero":
                    start = time.perf_counter()
                    restore = start_restore(
                        kube,
                        snapshot_id=snapshot_id,
                        snapshot_size=0,
                        namespace="app",
                        pvc="data",
                        storage_class="wffc",
                        size="1Gi",
                    )
                    start_workload(kube, restore)
                    name = restore.datadownload
                    await kube.wait_for(
                        "persistentvolumeclaims",
                        "data",
                        "app",
                        lambda _: finalizer_satisfied(kube, restore),
                        timeout=TIMEOUT_S,
                    )
                else:
                    cluster.ensure_namespace("app")
                    kube.create(
                        "persistentvolumeclaims",
                        {
                            "metadata": {"name": "data", "namespace": "app"},
                            "spec": {
                                "accessModes": ["ReadWriteOnce"],
                                "storageClassName": "wffc",
                                "resources": {"requests": {"storage": "1Gi"}},
                            },
                        },
                        namespace="app",
                    )
                    kube.create(
                        "pods",
                        {
                            "metadata": {"name": "app", "namespace": "app"},
                            "spec": {
                                "containers": [{"name": "app", "image": "busybox"}],
                                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                            },
                        },
                        namespace="app",
                    )
                    await kube.wait_for(
                        "pods", "app", "app", lambda p: (p or {}).get("status", {}).get("phase") == "Running"
                    )
                    start = time.perf_counter()
                    name = "in-place"
                    cluster.create_dd(name, snapshot_id, "data")
                done = await cluster.wait_phase(name, "Completed", "Failed", "Canceled", timeout=TIMEOUT_S)
                if done["status"]["phase"] != "Completed":
                    raise SystemExit(f"{way}: ended {done['status']['phase']}: {done['status'].get('message')}")
                return marks(kube, name, commits, start)


async def run(runs: int, size_mib: int, poll: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ferry-velero-flow-") as tmp:
        work = Path(tmp)
        server = SeaweedServer(work / "seaweedfs").start()
        try:
            bucket = await make_bucket(server)
            source = work / "source"
            source.mkdir()
            write_mixed_file(source / "data.bin", size_mib * MiB, seed=7)
            storage = await S3Storage.open(s3_settings_for(server), bucket, velero_repository_prefix("backups", "app"))
            try:
                snapshot_id = (await create_snapshot(Repository(storage), str(source), SnapshotSettings())).snapshot_id
            finally:
                await storage.aclose()
            results: dict[str, list[dict[str, float]]] = {"velero": [], "in place": []}
            for index in range(runs):
                for way, done in results.items():
                    run_dir = work / f"{way.replace(' ', '-')}-{index}"
                    run_dir.mkdir()
                    done.append(await one_run(server, bucket, snapshot_id, run_dir, way, poll))
        finally:
            server.stop()
    medians = {
        way: {mark: statistics.median(r[mark] for r in rs) for mark in MARKS if all(mark in r for r in rs)}
        for way, rs in results.items()
    }
    return {"size_mib": size_mib, "poll_s": poll, "runs": results, "medians": medians, "machine": machine()}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['size_mib']} MiB, poll interval {result['poll_s']} s; seconds from the DataDownload's creation:"]
    lines.append(f"{'':<10}" + "".join(f"{m:>15}" for m in MARKS))
    for way, medians in result["medians"].items():
        lines.append(f"{way:<10}" + "".join(f"{medians.get(m, float('nan')):>15.3f}" for m in MARKS))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--poll", type=float, default=2.0, help="FERRY_VOLUME_POLL_INTERVAL (the agent's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(run(args.runs, args.size_mib, args.poll))
    result["command"] = "python -m bench.velero_flow " + " ".join(sys.argv[1:])
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
