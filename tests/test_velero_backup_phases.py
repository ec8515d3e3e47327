"""The load limit backups and restores share on a node; a DataUpload deleted in each phase; Velero ending
the object itself (Canceled or Failed written by someone else)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.faulty_proxy import FaultyProxy
from tests.support.velero import NS, start_restore, start_workload, wait_done, world
from tests.support.velero_backup import (
    backup_cleaned_up,
    sample_app,
    start_backup,
    start_held_backup,
    wait_ended,
)


def _first_rv(cluster: Cluster, plural: str, name: str, pred: object) -> int:
    for rev in cluster.kube.history(plural, name, NS):
        if not rev.deleted and pred(rev.object):  # type: ignore[operator]
            return int(rev.object["metadata"]["resourceVersion"])
    raise AssertionError(f"{plural} {name} never matched")


async def test_a_restore_waits_for_a_running_backup_on_the_same_node(
    cluster: Cluster,
    tmp_path: Path,
    proxy: FaultyProxy,
    slow_bsl: str,
    tiny_snapshot: tuple[str, Path],
) -> None:
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        await sample_app(w.sim)
        backup = await start_held_backup(cluster.kube, proxy, slow_bsl)
        restore = start_restore(
            cluster.kube,
            snapshot_id=snapshot_id,
            source_namespace="app",
            namespace="restored",
            storage_class="immediate",
            size="64Mi",
        )
        start_workload(cluster.kube, restore)
        await cluster.wait_phase(restore.datadownload, "Prepared", "InProgress", "Completed", timeout=60)
        proxy.stall_puts = False
        proxy.released.set()
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        ended = await wait_done(cluster, restore)
        assert ended["status"]["phase"] == "Completed", ended["status"].get("message")
        uploaded = _first_rv(
            cluster,
            "datauploads",
            backup.dataupload,
            lambda o: "ferry.dev/uploaded-snapshot" in (o["metadata"].get("annotations") or {}),
        )
        started = _first_rv(
            cluster,
            "datadownloads",
            restore.datadownload,
            lambda o: (o.get("status") or {}).get("phase") == "InProgress",
        )
        assert started > uploaded, "the restore ran while the backup held the node's only slot"
        await backup_cleaned_up(w.sim, backup)


async def test_delete_while_waiting_for_the_snapshot(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        w.sim.pause_snapshots()
        backup = await start_backup(cluster.kube, wait_handle=False)
        await cluster.wait_phase_of("datauploads", backup.dataupload, "Accepted")
        cluster.kube.delete("datauploads", backup.dataupload, namespace=NS)
        w.sim.resume_snapshots()
        await cluster.kube.wait_gone("datauploads", backup.dataupload, NS, timeout=30)
        await backup_cleaned_up(w.sim, backup)


async def test_delete_while_prepared_behind_another_backup(
    cluster: Cluster, tmp_path: Path, proxy: FaultyProxy, slow_bsl: str
) -> None:
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        await sample_app(w.sim)
        first = await start_held_backup(cluster.kube, proxy, slow_bsl, backup_name="first")
        second = await start_backup(cluster.kube, backup_name="second")
        await cluster.wait_phase_of("datauploads", second.dataupload, "Prepared")
        cluster.kube.delete("datauploads", second.dataupload, namespace=NS)
        await cluster.kube.wait_gone("datauploads", second.dataupload, NS, timeout=30)
        await w.sim.settled()
        assert cluster.kube.get("pods", second.dataupload, namespace=NS) is None
        assert cluster.kube.get("volumesnapshots", second.dataupload, namespace=NS) is None
        assert cluster.kube.get("volumesnapshotcontents", second.dataupload) is None
        proxy.stall_puts = False
        proxy.released.set()
        done = await wait_ended(cluster.kube, first)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        await backup_cleaned_up(w.sim, first)
        await backup_cleaned_up(w.sim, second)


@pytest.mark.parametrize("phase", ["Canceled", "Failed"])
async def test_velero_ends_it_while_in_progress(
    cluster: Cluster, tmp_path: Path, proxy: FaultyProxy, slow_bsl: str, phase: str
) -> None:
    """Velero (a server restart) may write a terminal phase itself. No snapshot ID, everything cleaned up."""
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        backup = await start_held_backup(cluster.kube, proxy, slow_bsl)
        cluster.kube.patch(
            "datauploads",
            backup.dataupload,
            {
                "status": {
                    "phase": phase,
                    "message": "found a dataupload with status InProgress during the server starting",
                }
            },
            namespace=NS,
        )
        proxy.stall_puts = False
        proxy.released.set()
        await backup_cleaned_up(w.sim, backup)
        du = cluster.kube.get("datauploads", backup.dataupload, namespace=NS)
        assert du["status"]["phase"] == phase
        assert not du["status"].get("snapshotID")


async def test_velero_fails_it_while_accepted(cluster: Cluster, tmp_path: Path) -> None:
    """Velero marks an Accepted DataUpload Failed while the snapshot is being moved (backup VolumeSnapshot
    made, original being retired)."""
    kube = cluster.kube
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        hold = kube.hold_after("POST", r"/volumesnapshotcontents$")
        backup = await start_backup(kube)
        async with asyncio.timeout(30):
            await hold.reached.wait()
        kube.patch("datauploads", backup.dataupload, {"status": {"phase": "Failed", "message": "velero"}}, namespace=NS)
        hold.release()
        await backup_cleaned_up(w.sim, backup)
