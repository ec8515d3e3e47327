"""Velero's restore with ``--data-mover ferry``, end to end: Velero's objects replayed as its code creates
them (tests/support/velero.py), three agents on three nodes of the simulated cluster (tests/support/sim:
provisioner, PV binder, scheduler, kubelets), snapshots on the real S3 server, data through the real
pipeline. The DataDownload must end Completed with the application's PVC Bound to a PV holding the
snapshot byte for byte, the workload Running on it, and nothing of the restore left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.data import tree_differences
from tests.support.velero import (
    assert_nothing_left,
    datadownload,
    finalizer_satisfied,
    progress,
    start_restore,
    start_workload,
    wait_done,
    wait_released,
    wait_running,
    world,
)


@pytest.mark.parametrize("binding", ["immediate", "wffc"])
async def test_filesystem_restore_as_velero_runs_it(
    cluster: Cluster, tree_snapshot: tuple[str, Path], tmp_path: Path, binding: str
) -> None:
    snapshot_id, source = tree_snapshot
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink())
    async with world(cluster, tmp_path) as w:
        restore = start_restore(
            cluster.kube,
            snapshot_id=snapshot_id,
            snapshot_size=size,
            namespace="shop",  # restored under namespace mapping: backed up from "app"
            source_namespace="app",
            storage_class=binding,
        )
        pvc = cluster.kube.get("persistentvolumeclaims", "data", namespace="shop")
        assert pvc is not None
        assert pvc["status"]["phase"] == "Pending"
        pod = start_workload(cluster.kube, restore)
        done = await wait_done(cluster, restore)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        view = progress(datadownload(cluster.kube, restore))
        assert view["completed"]
        assert "err" not in view
        assert view["nCompleted"] == view["nTotal"] > 0
        await cluster.kube.wait_for(
            "persistentvolumeclaims", "data", "shop", lambda _: finalizer_satisfied(cluster.kube, restore), timeout=30
        )
        running = await wait_running(cluster, "shop", pod)
        restored = w.sim.pod_volume("shop", pod, "data")
        assert tree_differences(source, restored) == []
        await w.sim.settled()
        assert_nothing_left(cluster, restore)
        claim = cluster.kube.get("persistentvolumeclaims", "data", namespace="shop")
        assert claim is not None
        pv = cluster.kube.get("persistentvolumes", claim["spec"]["volumeName"])
        assert pv is not None
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
        assert pv["metadata"]["labels"]["velero.io/dynamic-pv-restore"] == restore.selector_value
        if binding == "wffc":
            selected = claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
            assert running["spec"]["nodeName"] == selected
        assert cluster.phases(restore.datadownload) == ["New", "Accepted", "Prepared", "InProgress", "Completed"]


@pytest.mark.root
@pytest.mark.parametrize("binding", ["immediate", "wffc"])
async def test_block_restore_as_velero_runs_it(
    cluster: Cluster, image_snapshot: tuple[str, Path], tmp_path: Path, binding: str
) -> None:
    snapshot_id, image = image_snapshot
    expected = image.read_bytes()
    async with world(cluster, tmp_path) as w:
        restore = start_restore(
            cluster.kube,
            snapshot_id=snapshot_id,
            snapshot_size=len(expected),
            namespace="shop",
            source_namespace="app",
            pvc="disk",
            storage_class=binding,
            volume_mode="Block",
            size="64Mi",
        )
        pod = start_workload(cluster.kube, restore, block=True)
        done = await wait_done(cluster, restore)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        assert done["status"]["progress"] == {"totalBytes": len(expected), "bytesDone": len(expected)}
        view = progress(datadownload(cluster.kube, restore))
        assert view["completed"]
        assert "err" not in view
        assert view["nCompleted"] == view["nTotal"] == len(expected)
        await cluster.kube.wait_for(
            "persistentvolumeclaims", "disk", "shop", lambda _: finalizer_satisfied(cluster.kube, restore), timeout=30
        )
        await wait_running(cluster, "shop", pod)
        device = w.sim.pod_volume("shop", pod, "disk")
        with open(device, "rb") as f:
            assert f.read(len(expected)) == expected
        await w.sim.settled()
        assert_nothing_left(cluster, restore)
        claim = cluster.kube.get("persistentvolumeclaims", "disk", namespace="shop")
        assert claim is not None
        pv = cluster.kube.get("persistentvolumes", claim["spec"]["volumeName"])
        assert pv is not None
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
        assert pv["spec"]["volumeMode"] == "Block"


async def test_four_restores_at_once_over_three_agents(
    cluster: Cluster, tree_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    snapshot_id, source = tree_snapshot
    async with world(cluster, tmp_path) as w:
        restores = []
        for index, binding in enumerate(["immediate", "wffc", "wffc", "immediate"]):
            restore = start_restore(
                cluster.kube,
                snapshot_id=snapshot_id,
                namespace=f"shop-{index}",
                source_namespace="app",
                storage_class=binding,
                restore_name=f"restore-{index}",
            )
            start_workload(cluster.kube, restore)
            restores.append(restore)
        for restore in restores:
            done = await wait_done(cluster, restore, timeout=90)
            assert done["status"]["phase"] == "Completed", done["status"].get("message")
        for restore in restores:
            await cluster.kube.wait_for(
                "persistentvolumeclaims",
                "data",
                restore.pvc_namespace,
                lambda _, r=restore: finalizer_satisfied(cluster.kube, r),
                timeout=30,
            )
            await wait_running(cluster, restore.pvc_namespace, "db-0")
            assert tree_differences(source, w.sim.pod_volume(restore.pvc_namespace, "db-0", "data")) == []
        await w.sim.settled()
        assert cluster.kube.list("pods", namespace="velero") == []
        assert cluster.kube.list("persistentvolumeclaims", namespace="velero") == []
        named = {
            cluster.kube.get("persistentvolumeclaims", "data", namespace=r.pvc_namespace)["spec"]["volumeName"]  # type: ignore[index]
            for r in restores
        }
        assert {pv["metadata"]["name"] for pv in cluster.kube.list("persistentvolumes")} == named
        assert len(named) == 4
        for restore in restores:
            await wait_released(cluster, restore)


async def test_two_datadownloads_for_one_pvc(cluster: Cluster, tree_snapshot: tuple[str, Path], tmp_path: Path) -> None:
    """One of them hands its volume to the PVC; the other then finds it bound and fails; neither leaks."""
    snapshot_id, source = tree_snapshot
    async with world(cluster, tmp_path) as w:
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id, storage_class="immediate")
        cluster.create_dd("second", snapshot_id, "data", in_place=False)
        start_workload(cluster.kube, restore)
        first = await wait_done(cluster, restore, timeout=90)
        second = await cluster.wait_phase("second", "Completed", "Failed", "Canceled", timeout=90)
        assert sorted([first["status"]["phase"], second["status"]["phase"]]) == ["Completed", "Failed"]
        await cluster.kube.wait_for(
            "persistentvolumeclaims", "data", "app", lambda _: finalizer_satisfied(cluster.kube, restore), timeout=30
        )
        await wait_running(cluster, "app", "db-0")
        assert tree_differences(source, w.sim.pod_volume("app", "db-0", "data")) == []
        await wait_released(cluster, restore)
        await cluster.kube.wait_for(
            "datadownloads",
            "second",
            "velero",
            lambda d: "ferry.dev/cleanup" not in d["metadata"].get("finalizers", []),
        )
        await w.sim.settled()
        assert_nothing_left(cluster, restore)
        assert cluster.kube.get("pods", "second", namespace="velero") is None
        assert cluster.kube.get("persistentvolumeclaims", "second", namespace="velero") is None
