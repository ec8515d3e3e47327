"""The DataUpload path, as a child process the backup bench measures beside ``ferry snapshot create`` and
``restic backup``: Velero's backup of one PVC, replayed as Velero creates its objects, through one Ferry
agent (in process, the DaemonSet's settings) on the tests' simulated cluster, into an S3 bucket.

    python -m bench.dataupload --endpoint URL --bucket B --source PATH --work DIR [--out FILE]

The source (a directory, or an image file for a Block volume) is first copied into the application's
volume (not timed); Velero's VolumeSnapshot of it is cut (not timed: Velero creates the DataUpload only
once the snapshot has a handle). Then the clock runs from the DataUpload's creation to Completed.
Prints (or writes to ``--out``) one JSON object: seconds from the creation to each phase, to the snapshot being stored
(``uploaded``) and to Completed; ``transfer`` (InProgress → stored: what the agent's snapshot writer
took, the part to compare with the other tools); the snapshot ID and the bytes stored.

The simulated cluster's CSI driver copies the snapshot's data when it provisions the backup PVC (a real
driver clones it), so the time before InProgress grows with the volume here; a real cluster's is its
driver's. The process's CPU and memory include the simulated API server and cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.first_byte import time_commits
from tests.agent_fixtures import agent_kubeconfig
from tests.support.cluster import NS, Cluster, agent_settings, running_agent
from tests.support.kube import KubeServer, velero_crds
from tests.support.kube.snapshot_crds import snapshot_crds
from tests.support.sim import SimCluster
from tests.support.velero import IMAGE, SNAPSHOT_CLASS
from tests.support.velero_backup import app_volume, start_app, start_backup, wait_ended

MARKS = ("Accepted", "Prepared", "InProgress", "uploaded", "Completed")
TIMEOUT_S = 3600.0


def _marks(kube: KubeServer, name: str, commits: dict[int, float], start: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for revision in kube.history("datauploads", name, NS):
        if revision.deleted:
            continue
        at = round(commits[int(revision.object["metadata"]["resourceVersion"])] - start, 3)
        out.setdefault((revision.object.get("status") or {}).get("phase") or "New", at)
        if "ferry.dev/uploaded-snapshot" in (revision.object["metadata"].get("annotations") or {}):
            out.setdefault("uploaded", at)
    return out


def _fill(source: Path, volume: Path) -> None:
    """Put the source's data into the application's volume (a mounted directory, or its block device)."""
    if source.is_dir():
        subprocess.run(["cp", "-a", f"{source}/.", str(volume)], check=True)
    else:
        with source.open("rb") as src, open(volume, "r+b") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
            dst.flush()
            os.fsync(dst.fileno())
    os.sync()


async def run(endpoint: str, bucket: str, source: Path, work: Path) -> dict[str, Any]:
    block = not source.is_dir()
    size = source.stat().st_size if block else sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    async with KubeServer(velero_crds() + snapshot_crds()) as kube:
        commits = time_commits(kube)
        kube.create("namespaces", {"metadata": {"name": NS}})
        cluster = Cluster(kube, work / "kubelet", agent_kubeconfig(kube, work / "kubeconfig"), bucket, endpoint)
        cluster.add_credentials_secret()
        cluster.add_bsl(credential={"name": "ferry-credentials", "key": "cloud"})
        async with SimCluster(kube, work / "sim", ["node-a"]) as sim:
            sim.add_storage_class("standard")
            sim.add_snapshot_class(SNAPSHOT_CLASS, default=True)
            # The claim holds the data with room to spare (a Block image is exactly its size).
            mib = -(-size // (1 << 20))
            request = f"{mib if block else mib + 64}Mi"
            start_app(kube, storage_class="standard", size=request, block=block)
            _fill(source, await app_volume(sim))
            settings = agent_settings(
                cluster,
                "node-a",
                kubelet_root=str(sim.kubelet_root("node-a")),
                pod_image=IMAGE,
                progress_interval_s=5.0,
                shutdown_grace_s=20.0,
            )
            async with running_agent(settings):
                backup = await start_backup(kube)
                done = await wait_ended(kube, backup, timeout=TIMEOUT_S)
                if done["status"]["phase"] != "Completed":
                    raise SystemExit(f"the DataUpload ended {done['status']['phase']}: {done['status'].get('message')}")
                # the clock starts at the DataUpload's creation, dated by its commit
                history = kube.history("datauploads", backup.dataupload, NS)
                created = commits[int(history[0].object["metadata"]["resourceVersion"])]
                marks = _marks(kube, backup.dataupload, commits, created)
    return {
        "size": size,
        "marks": marks,
        "transfer": round(marks["uploaded"] - marks["InProgress"], 3),
        "seconds": marks["Completed"],
        "snapshot_id": done["status"]["snapshotID"],
        "new_stored_bytes": done["status"].get("incrementalBytes", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="write the result here instead of standard output")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args.endpoint, args.bucket, args.source, args.work))
    text = json.dumps(result, indent=2) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
