"""Objects named like the DataUpload that Ferry did not make (a VolumeSnapshot in Velero's namespace, a
VolumeSnapshotContent, a pod) are refused (Failed, saying so), never used and never deleted, and nothing
of the backup is left (no storage snapshot) — also when Velero's VolumeSnapshot of a Retain class is gone
before Ferry recorded its content."""

from __future__ import annotations

from pathlib import Path

from tests.support.cluster import Cluster, running_agent
from tests.support.velero import NS, world
from tests.support.velero_backup import (
    VS,
    VSC,
    app_volume,
    start_app,
    start_backup,
    stored_tree,
    wait_ended,
)


async def test_foreign_volumesnapshot_named_like_the_dataupload_is_not_used(cluster: Cluster, tmp_path: Path) -> None:
    """A VolumeSnapshot ``velero/<dataupload>`` someone else made (a snapshot of another PVC in Velero's
    namespace) exists before the agent looks. It must be refused, not backed up in place of the app's data."""
    kube = cluster.kube
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        start_app(kube)
        volume = await app_volume(w.sim)
        (volume / "app.txt").write_text("the application's data\n")
        # another PVC in Velero's namespace, with other data
        start_app(kube, namespace=NS, pvc="other", pod="other-0")
        other = await app_volume(w.sim, namespace=NS, pvc="other", pod="other-0")
        (other / "foreign.txt").write_text("NOT the application's data\n")

        backup = await start_backup(kube)
        kube.create(
            VS,
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "metadata": {"name": backup.dataupload, "namespace": NS},
                "spec": {
                    "source": {"persistentVolumeClaimName": "other"},
                    "volumeSnapshotClassName": "ferry-snapclass",
                },
            },
            namespace=NS,
        )
        foreign = await kube.wait_for(
            VS, backup.dataupload, NS, lambda v: bool(v and (v.get("status") or {}).get("readyToUse"))
        )
        foreign_content = foreign["status"]["boundVolumeSnapshotContentName"]

        async with running_agent(w.settings("node-a")):
            done = await wait_ended(kube, backup)
            status = done["status"]
            if status["phase"] == "Completed":
                stored = await stored_tree(cluster, done, tmp_path / "stored")
                names = sorted(p.name for p in stored.rglob("*"))
                assert (stored / "app.txt").exists(), f"Completed, but the snapshot stored holds {names}"
            assert status["phase"] == "Failed", f"{status['phase']}: {status.get('message')}"
            assert "already exists" in status.get("message", ""), status.get("message")
            await w.sim.settled()
        # the foreign snapshot is untouched
        still = kube.get(VS, backup.dataupload, namespace=NS)
        assert still is not None
        assert not still["metadata"].get("deletionTimestamp")
        assert still["metadata"]["uid"] == foreign["metadata"]["uid"]
        assert kube.get(VSC, foreign_content) is not None
        # no content of Ferry's left pointing at it, no storage snapshot of the backup left
        assert kube.get(VSC, backup.dataupload) is None, "Ferry made a content bound to a foreign VolumeSnapshot"
        handles = {
            c["status"]["snapshotHandle"] for c in kube.list(VSC) if (c.get("status") or {}).get("snapshotHandle")
        }
        assert w.sim.storage_snapshots() == handles, "a storage snapshot of the backup was left behind"


async def test_foreign_content_named_like_the_dataupload_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """A VolumeSnapshotContent named like the DataUpload, made by someone else (pre-provisioned, bound to
    another VolumeSnapshot). It must be refused and left alone, and the backup's storage snapshot must not
    leak."""
    kube = cluster.kube
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        start_app(kube)
        volume = await app_volume(w.sim)
        (volume / "app.txt").write_text("the application's data\n")
        backup = await start_backup(kube)
        kube.create(
            VSC,
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": backup.dataupload},
                "spec": {
                    "volumeSnapshotRef": {"namespace": "elsewhere", "name": "theirs"},
                    "source": {"snapshotHandle": "someone-elses-handle"},
                    "deletionPolicy": "Retain",
                    "driver": "csi.ferry.test",
                },
            },
        )
        foreign = kube.get(VSC, backup.dataupload)
        assert foreign is not None
        async with running_agent(w.settings("node-a")):
            done = await wait_ended(kube, backup)
            status = done["status"]
            assert status["phase"] == "Failed", f"{status['phase']}: {status.get('message')}"
            await kube.wait_for(
                "datauploads",
                backup.dataupload,
                NS,
                lambda du: du is None or "ferry.dev/cleanup" not in (du["metadata"].get("finalizers") or []),
                timeout=30,
            )
            await w.sim.settled()
        still = kube.get(VSC, backup.dataupload)
        assert still is not None
        assert still["metadata"]["uid"] == foreign["metadata"]["uid"]
        assert not still["metadata"].get("deletionTimestamp"), "Ferry deleted a content it did not make"
        assert still["spec"]["deletionPolicy"] == "Retain"
        assert w.sim.storage_snapshots() == set(), "the backup's storage snapshot leaked"
        assert kube.get(VS, backup.dataupload, namespace=NS) is None, "backup VolumeSnapshot left behind"
        assert "already exists" in status.get("message", ""), status.get("message")


async def test_foreign_pod_named_like_the_dataupload_is_refused_and_left_alone(
    cluster: Cluster, tmp_path: Path
) -> None:
    kube = cluster.kube
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        start_app(kube)
        await app_volume(w.sim)
        backup = await start_backup(kube)
        kube.create(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": backup.dataupload, "namespace": NS},
                "spec": {"containers": [{"name": "x", "image": "busybox"}]},
            },
            namespace=NS,
        )
        foreign = kube.get("pods", backup.dataupload, namespace=NS)
        async with running_agent(w.settings("node-a")):
            done = await wait_ended(kube, backup)
            assert done["status"]["phase"] == "Failed", done["status"].get("message")
            assert "already exists" in done["status"]["message"]
            await kube.wait_for(
                "datauploads",
                backup.dataupload,
                NS,
                lambda du: du is None or "ferry.dev/cleanup" not in (du["metadata"].get("finalizers") or []),
                timeout=30,
            )
            await w.sim.settled()
        still = kube.get("pods", backup.dataupload, namespace=NS)
        assert still is not None
        assert still["metadata"]["uid"] == foreign["metadata"]["uid"]
        assert not still["metadata"].get("deletionTimestamp")
        assert w.sim.storage_snapshots() == set()
        assert kube.get(VS, backup.dataupload, namespace=NS) is None
        assert kube.get(VSC, backup.dataupload) is None


async def test_app_namespace_deleted_before_the_move_with_a_retain_class(cluster: Cluster, tmp_path: Path) -> None:
    """Velero's CSI docs use deletionPolicy Retain. The application's namespace is deleted while the
    DataUpload is New: Velero's VolumeSnapshot goes, its Retain content and storage snapshot stay. The backup
    fails (the snapshot is gone from under it) — but no storage snapshot may be left."""
    kube = cluster.kube
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        w.sim.add_snapshot_class("keep", deletion="Retain")
        start_app(kube)
        volume = await app_volume(w.sim)
        (volume / "x").write_text("x\n")
        backup = await start_backup(kube, snapshot_class="keep")
        kube.delete("namespaces", "app")
        await kube.wait_gone("namespaces", "app", None, timeout=30)
        async with running_agent(w.settings("node-a")):
            done = await wait_ended(kube, backup)
            assert done["status"]["phase"] == "Failed", done["status"].get("message")
            await kube.wait_for(
                "datauploads",
                backup.dataupload,
                NS,
                lambda du: du is None or "ferry.dev/cleanup" not in (du["metadata"].get("finalizers") or []),
                timeout=30,
            )
            await w.sim.settled()
        assert w.sim.storage_snapshots() == set(), (
            f"storage snapshot left behind; contents: {[c['metadata']['name'] for c in kube.list(VSC)]}; "
            f"message: {done['status'].get('message')}"
        )
