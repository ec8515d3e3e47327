"""An agent killed (as SIGKILL would: no shutdown path runs) right after each write of Velero's restore
flow, then started again on its node: it finishes the restore — expose, restore, rebind — instead of
starting over where that would lose work or leak, and leaves nothing behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, killable_agent
from tests.support.velero import (
    NS,
    handed_over,
    start_restore,
    start_workload,
    wait_done,
    world,
)

DD = r"/datadownloads/[^/]+$"
PV = r"/persistentvolumes/[^/]+$"
STEPS = {
    "accepted": ("PATCH", DD, r'"Accepted"'),
    "restore-pvc-created": ("POST", r"/namespaces/velero/persistentvolumeclaims$", None),
    "restore-pod-created": ("POST", r"/namespaces/velero/pods$", None),
    "prepared": ("PATCH", DD, r'"Prepared"'),
    "in-progress": ("PATCH", DD, r'"InProgress"'),
    "data-recorded": ("PATCH", DD, r"ferry.dev/restored-pv"),
    "pv-retained": ("PATCH", PV, r'"Retain"'),
    "restore-pod-deleted": ("DELETE", r"/namespaces/velero/pods/[^/]+$", None),
    "restore-pvc-deleted": ("DELETE", r"/namespaces/velero/persistentvolumeclaims/[^/]+$", None),
    "target-pvc-named": ("PATCH", r"/namespaces/app/persistentvolumeclaims/data$", None),
    "pv-claimed": ("PATCH", PV, r'"claimRef"'),
    "policy-restored": ("PATCH", PV, r'"Delete"'),
    "completed": ("PATCH", DD, r'"Completed"'),
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_killed_after_each_step_finishes_on_restart(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path, step: str
) -> None:
    snapshot_id, source = tiny_snapshot
    method, path, body = STEPS[step]
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        hold = cluster.kube.hold_after(method, path, body)
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        pod = start_workload(cluster.kube, restore)
        async with killable_agent(w.settings("node-a")) as first:
            async with asyncio.timeout(30):
                await hold.reached.wait()
            await first.kill()
        hold.release()
        async with killable_agent(w.settings("node-a")):
            done = await wait_done(cluster, restore)
            assert done["status"]["phase"] == "Completed", done["status"].get("message")
            assert done["status"]["progress"]["bytesDone"] == done["status"]["progress"]["totalBytes"]
            restored = await handed_over(w, restore, pod)
            assert (restored / "note.txt").read_bytes() == (source / "note.txt").read_bytes()
            assert cluster.kube.get("datadownloads", restore.datadownload, namespace=NS) is not None
