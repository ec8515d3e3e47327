"""Velero's backup through Ferry when things go wrong: an agent killed (as SIGKILL would) right after each
write of the flow, cancels and deletions in every phase, a snapshot that never becomes ready, a snapshot
type Ferry does not move, and each supported Velero CRD. Whatever happens, the DataUpload ends in the
right phase, never records a snapshot ID that is not wholly stored, and nothing of the backup is left:
no pod, PVC, PV, VolumeSnapshot, content or storage snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.agent_fixtures import make_cluster
from tests.support.cluster import Cluster, credentials_ini, killable_agent
from tests.support.data import tree_differences
from tests.support.faulty_proxy import FaultyProxy
from tests.support.kube import VELERO_VERSIONS, KubeServer, velero_crds
from tests.support.kube.snapshot_crds import snapshot_crds
from tests.support.seaweed import SeaweedServer
from tests.support.velero import NS, progress, world
from tests.support.velero_backup import (
    backup_cleaned_up,
    dataupload,
    sample_app,
    start_backup,
    start_held_backup,
    stored_tree,
    wait_ended,
)

DU = r"/datauploads/[^/]+$"
STEPS = {
    "accepted": ("PATCH", DU, r'"Accepted"'),
    "content-recorded": ("PATCH", DU, r"ferry.dev/snapshot-content"),
    "backup-vs-created": ("POST", r"/namespaces/velero/volumesnapshots$", None),
    "backup-vsc-created": ("POST", r"/volumesnapshotcontents$", None),
    "original-retained": ("PATCH", r"/volumesnapshotcontents/[^/]+$", r'"Retain"'),
    "original-vs-deleted": ("DELETE", r"/namespaces/app/volumesnapshots/[^/]+$", None),
    "original-vsc-deleted": ("DELETE", r"/volumesnapshotcontents/[^/]+$", None),
    "backup-pvc-created": ("POST", r"/namespaces/velero/persistentvolumeclaims$", None),
    "backup-pod-created": ("POST", r"/namespaces/velero/pods$", None),
    "prepared": ("PATCH", DU, r'"Prepared"'),
    "in-progress": ("PATCH", DU, r'"InProgress"'),
    "uploaded": ("PATCH", DU, r"ferry.dev/uploaded-snapshot"),
    "backup-pod-deleted": ("DELETE", r"/namespaces/velero/pods/[^/]+$", None),
    "backup-pvc-deleted": ("DELETE", r"/namespaces/velero/persistentvolumeclaims/[^/]+$", None),
    "backup-vs-deleted": ("DELETE", r"/namespaces/velero/volumesnapshots/[^/]+$", None),
    "completed": ("PATCH", DU, r'"Completed"'),
}


def cancel(cluster: Cluster, name: str) -> None:
    """What Velero's ``Cancel(operationID)`` does: a merge patch of ``spec.cancel: true``."""
    cluster.kube.patch("datauploads", name, {"spec": {"cancel": True}}, namespace=NS)


def _no_snapshot_id(du: dict[str, object]) -> None:
    status = du.get("status") or {}
    assert isinstance(status, dict)
    assert not status.get("snapshotID"), "a snapshot ID was recorded for a backup that did not complete"


@pytest.mark.parametrize("step", list(STEPS))
async def test_killed_after_each_step_finishes_on_restart(cluster: Cluster, tmp_path: Path, step: str) -> None:
    method, path, body = STEPS[step]
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        volume = await sample_app(w.sim)
        hold = cluster.kube.hold_after(method, path, body)
        backup = await start_backup(cluster.kube)
        async with killable_agent(w.settings("node-a")) as first:
            async with asyncio.timeout(30):
                await hold.reached.wait()
            await first.kill()
        hold.release()
        async with killable_agent(w.settings("node-a")):
            done = await wait_ended(cluster.kube, backup)
            assert done["status"]["phase"] == "Completed", done["status"].get("message")
            assert done["status"]["progress"]["bytesDone"] == done["status"]["progress"]["totalBytes"] > 0
            await backup_cleaned_up(w.sim, backup)
        assert tree_differences(volume, await stored_tree(cluster, done, tmp_path / "stored")) == []


async def test_canceled_while_its_agent_was_down_mid_backup(cluster: Cluster, tmp_path: Path) -> None:
    """The agent died with the backup InProgress; Velero canceled meanwhile: the agent back on its node ends
    it Canceled (saying the backup had stopped, not that it never started) and cleans up."""
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        await sample_app(w.sim)
        hold = cluster.kube.hold_after("PATCH", DU, r'"InProgress"')
        backup = await start_backup(cluster.kube)
        async with killable_agent(w.settings("node-a")) as first:
            async with asyncio.timeout(30):
                await hold.reached.wait()
            await first.kill()
        hold.release()
        cancel(cluster, backup.dataupload)
        async with killable_agent(w.settings("node-a")):
            done = await wait_ended(cluster.kube, backup)
            assert done["status"]["phase"] == "Canceled"
            assert done["status"]["message"] == "canceled; the backup had already stopped"
            _no_snapshot_id(done)
            await backup_cleaned_up(w.sim, backup)


async def test_cancel_while_new(cluster: Cluster, tmp_path: Path) -> None:
    """No agent claimed it yet: Velero's VolumeSnapshot (and so the storage snapshot) goes with it."""
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube)
        cancel(cluster, backup.dataupload)
        assert w.sim.storage_snapshots(), "the snapshot was not cut"
        async with killable_agent(w.settings("node-a")):
            done = await wait_ended(cluster.kube, backup)
            assert done["status"]["phase"] == "Canceled"
            assert progress(done)["err"] == "DataUpload is canceled"
            _no_snapshot_id(done)
            await backup_cleaned_up(w.sim, backup)


async def test_cancel_while_waiting_for_the_snapshot(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        w.sim.pause_snapshots()
        backup = await start_backup(cluster.kube, wait_handle=False)
        await cluster.wait_phase_of("datauploads", backup.dataupload, "Accepted")
        cancel(cluster, backup.dataupload)
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Canceled"
        _no_snapshot_id(done)
        w.sim.resume_snapshots()
        await backup_cleaned_up(w.sim, backup)


async def test_a_snapshot_that_never_becomes_ready_times_out_naming_it(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path, prepare_timeout_s=1.0) as w:
        await sample_app(w.sim)
        w.sim.pause_snapshots()
        backup = await start_backup(cluster.kube, wait_handle=False)
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Failed"
        message = done["status"]["message"]
        assert "FERRY_PREPARE_TIMEOUT" in message
        assert f"VolumeSnapshot app/{backup.volume_snapshot} of PVC app/data to be ready" in message
        _no_snapshot_id(done)
        w.sim.resume_snapshots()
        await backup_cleaned_up(w.sim, backup)


async def test_cancel_while_exposing(cluster: Cluster, tmp_path: Path) -> None:
    """The cancel arrives while the acceptor creates the backup pod."""
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        hold = cluster.kube.hold_after("POST", r"/namespaces/velero/pods$")
        backup = await start_backup(cluster.kube)
        async with asyncio.timeout(30):
            await hold.reached.wait()
        cancel(cluster, backup.dataupload)
        hold.release()
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Canceled"
        _no_snapshot_id(done)
        await backup_cleaned_up(w.sim, backup)


@pytest.mark.parametrize("end", ["cancel", "delete"])
async def test_cancel_or_delete_while_in_progress(
    cluster: Cluster, tmp_path: Path, proxy: FaultyProxy, slow_bsl: str, end: str
) -> None:
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        backup = await start_held_backup(cluster.kube, proxy, slow_bsl)
        assert cluster.phase_of("datauploads", backup.dataupload) == "InProgress"
        if end == "cancel":
            cancel(cluster, backup.dataupload)
            done = await wait_ended(cluster.kube, backup)
            assert done["status"]["phase"] == "Canceled"
            assert cluster.phases(backup.dataupload, "datauploads")[-2:] == ["Canceling", "Canceled"]
            _no_snapshot_id(done)
        else:
            cluster.kube.delete("datauploads", backup.dataupload, namespace=NS)
            assert cluster.kube.get("datauploads", backup.dataupload, namespace=NS) is not None, "no finalizer"
            await cluster.kube.wait_gone("datauploads", backup.dataupload, NS, timeout=30)
        proxy.stall_puts = False
        proxy.released.set()
        await backup_cleaned_up(w.sim, backup)


async def test_cancel_while_prepared_behind_another_backup(
    cluster: Cluster, tmp_path: Path, proxy: FaultyProxy, slow_bsl: str
) -> None:
    """One agent, one transfer at a time (backups and restores share the load limit): the second backup
    waits Prepared while the first one's upload is held."""
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        await sample_app(w.sim)
        first = await start_held_backup(cluster.kube, proxy, slow_bsl, backup_name="first")
        second = await start_backup(cluster.kube, backup_name="second")
        await cluster.wait_phase_of("datauploads", second.dataupload, "Prepared")
        cancel(cluster, second.dataupload)
        done = await wait_ended(cluster.kube, second)
        assert done["status"]["phase"] == "Canceled"
        assert cluster.phases(second.dataupload, "datauploads") == ["New", "Accepted", "Prepared", "Canceled"]
        proxy.stall_puts = False
        proxy.released.set()
        finished = await wait_ended(cluster.kube, first)
        assert finished["status"]["phase"] == "Completed", finished["status"].get("message")
        await backup_cleaned_up(w.sim, first)
        await backup_cleaned_up(w.sim, second)


async def test_a_snapshot_type_ferry_does_not_move_fails_saying_so(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube)
        cluster.kube.patch("datauploads", backup.dataupload, {"spec": {"snapshotType": "PodVolume"}}, namespace=NS)
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Failed"
        assert "Ferry backs up CSI snapshots only" in done["status"]["message"]


@pytest.mark.parametrize("version", [*VELERO_VERSIONS, "1.18+status"])
async def test_each_supported_velero_crd(version: str, tmp_path: Path, s3_server: SeaweedServer) -> None:
    version, _, flavour = version.partition("+")
    crds = velero_crds(version, status_subresource=flavour == "status") + snapshot_crds()
    kube = await KubeServer(crds).start()
    try:
        kube.create("namespaces", {"metadata": {"name": NS}})
        cluster = await make_cluster(kube, tmp_path, s3_server)
        cluster.add_credentials_secret(text=credentials_ini())
        cluster.add_bsl(credential={"name": "ferry-credentials", "key": "cloud"})
        async with world(cluster, tmp_path) as w:
            volume = await sample_app(w.sim)
            backup = await start_backup(kube, version=version)
            done = await wait_ended(kube, backup)
            assert done["status"]["phase"] == "Completed", done["status"].get("message")
            assert ("incrementalBytes" in done["status"]) == (version >= "1.18")
            assert ("nodeOS" in done["status"]) == (version >= "1.16")
            assert cluster.phases(backup.dataupload, "datauploads") == [
                "New",
                "Accepted",
                "Prepared",
                "InProgress",
                "Completed",
            ]
            await backup_cleaned_up(w.sim, backup)
            assert tree_differences(volume, await stored_tree(cluster, done, tmp_path / "stored")) == []
            view = progress(dataupload(kube, backup))  # as Velero finds it, by its operation ID
            assert view["completed"]
            assert "err" not in view
    finally:
        await kube.stop()
