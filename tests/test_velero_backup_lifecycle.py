"""The backup's lifecycle and cleanup under odd conditions: a Retain VolumeSnapshotClass, a missing BSL,
wrong credentials, bad and unknown dataMoverConfig keys, deleted sources, another datamover's objects,
two backups of one PVC at once, a short operationTimeout, a restore into another namespace, a backup pod
that cannot be scheduled or lands on a node without an agent."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.support.cluster import Cluster, credentials_ini, running_agent
from tests.support.data import tree_differences
from tests.support.velero import NS, handed_over, start_workload, wait_done, world
from tests.support.velero_backup import (
    VS,
    VSC,
    backup_cleaned_up,
    restore_of,
    sample_app,
    start_backup,
    stored_tree,
    wait_ended,
)


def _events(cluster: Cluster, name: str) -> list[dict[str, object]]:
    return [e for e in cluster.kube.list("events", namespace=NS) if e["involvedObject"].get("name") == name]


async def test_retain_snapshot_class_completes_and_leaves_no_storage_snapshot(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        w.sim.add_snapshot_class("keep", deletion="Retain")
        volume = await sample_app(w.sim)
        backup = await start_backup(cluster.kube, snapshot_class="keep")
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        await backup_cleaned_up(w.sim, backup)
        assert tree_differences(volume, await stored_tree(cluster, done, tmp_path / "stored")) == []


async def test_retain_snapshot_class_missing_bsl_fails_cleanly(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        w.sim.add_snapshot_class("keep", deletion="Retain")
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube, snapshot_class="keep", bsl="missing")
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Failed"
        message = done["status"]["message"]
        assert "missing" in message, message
        assert not done["status"].get("snapshotID")
        await backup_cleaned_up(w.sim, backup)


async def test_wrong_credentials_fail_with_a_message_and_clean_up(cluster: Cluster, tmp_path: Path) -> None:
    cluster.add_credentials_secret(name="bad-creds", text=credentials_ini("nobody", "wrong-secret"))
    cluster.add_bsl("badcreds", credential={"name": "bad-creds", "key": "cloud"})
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube, bsl="badcreds")
        done = await wait_ended(cluster.kube, backup, timeout=120)
        assert done["status"]["phase"] == "Failed"
        message = done["status"]["message"]
        assert "badcreds" in message or "credential" in message.lower() or "access" in message.lower(), message
        assert not done["status"].get("snapshotID")
        await backup_cleaned_up(w.sim, backup)


async def test_retain_class_cancel_while_new(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        w.sim.add_snapshot_class("keep", deletion="Retain")
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube, snapshot_class="keep")
        cluster.kube.patch("datauploads", backup.dataupload, {"spec": {"cancel": True}}, namespace=NS)
        async with running_agent(w.settings("node-a")):
            done = await wait_ended(cluster.kube, backup)
            assert done["status"]["phase"] == "Canceled"
            await backup_cleaned_up(w.sim, backup)


async def test_parallel_files_upload_zero_fails_saying_which_key(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube, config={"ParallelFilesUpload": "0"})
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Failed"
        assert "ParallelFilesUpload" in done["status"]["message"], done["status"]["message"]
        await backup_cleaned_up(w.sim, backup)


async def test_unknown_config_key_gives_an_event_and_completes(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube, config={"ferry.bogus": "1", "WriteSparseFiles": "true"})
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        await backup_cleaned_up(w.sim, backup)
        unknown = [e for e in _events(cluster, backup.dataupload) if e["reason"] == "UnknownConfig"]
        assert len(unknown) == 1
        listed = str(unknown[0]["message"]).split(" mean nothing")[0]
        assert "ferry.bogus" in listed
        assert "WriteSparseFiles" not in listed  # a restore key: one configuration may serve both


async def test_another_datamover_is_never_touched(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        other = await start_backup(cluster.kube, datamover="velero", backup_name="theirs")
        before_du = cluster.kube.get("datauploads", other.dataupload, namespace=NS)
        before_vs = cluster.kube.get(VS, other.volume_snapshot, namespace="app")
        ours = await start_backup(cluster.kube, backup_name="ours")
        done = await wait_ended(cluster.kube, ours)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        await w.sim.settled()
        assert cluster.kube.get(VS, ours.dataupload, namespace=NS) is None
        assert cluster.kube.get(VSC, ours.dataupload) is None
        assert cluster.kube.get(VS, ours.volume_snapshot, namespace="app") is None
        after_du = cluster.kube.get("datauploads", other.dataupload, namespace=NS)
        after_vs = cluster.kube.get(VS, other.volume_snapshot, namespace="app")
        assert after_du["metadata"]["resourceVersion"] == before_du["metadata"]["resourceVersion"]
        assert after_vs is not None
        assert not after_vs["metadata"].get("deletionTimestamp")
        assert after_vs["metadata"]["uid"] == before_vs["metadata"]["uid"]
        content = after_vs["status"]["boundVolumeSnapshotContentName"]
        vsc = cluster.kube.get(VSC, content)
        assert vsc is not None
        assert vsc["spec"]["deletionPolicy"] == "Delete"


async def test_two_backups_of_one_pvc_at_once(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path, concurrency=2) as w:
        volume = await sample_app(w.sim)
        first = await start_backup(cluster.kube, backup_name="one")
        second = await start_backup(cluster.kube, backup_name="two")
        d1 = await wait_ended(cluster.kube, first)
        d2 = await wait_ended(cluster.kube, second)
        for d in (d1, d2):
            assert d["status"]["phase"] == "Completed", d["status"].get("message")
        await backup_cleaned_up(w.sim, first)
        await backup_cleaned_up(w.sim, second)
        assert tree_differences(volume, await stored_tree(cluster, d1, tmp_path / "s1")) == []
        assert tree_differences(volume, await stored_tree(cluster, d2, tmp_path / "s2")) == []


async def test_app_pvc_deleted_right_after_the_snapshot(cluster: Cluster, tmp_path: Path) -> None:
    kube = cluster.kube
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        volume = await sample_app(w.sim)
        expected = tmp_path / "expected"
        subprocess.run(["cp", "-a", str(volume), str(expected)], check=True)
        backup = await start_backup(kube)
        kube.delete("pods", "db-0", namespace="app")
        kube.delete("persistentvolumeclaims", "data", namespace="app")
        await kube.wait_gone("persistentvolumeclaims", "data", "app", timeout=30)
        async with running_agent(w.settings("node-a")):
            done = await wait_ended(kube, backup)
            assert done["status"]["phase"] == "Completed", done["status"].get("message")
            await backup_cleaned_up(w.sim, backup)
        assert tree_differences(expected, await stored_tree(cluster, done, tmp_path / "stored")) == []


async def test_original_volumesnapshot_deleted_after_content_recorded(cluster: Cluster, tmp_path: Path) -> None:
    kube = cluster.kube
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        await sample_app(w.sim)
        hold = kube.hold_after("PATCH", r"/datauploads/[^/]+$", r"ferry.dev/snapshot-content")
        backup = await start_backup(kube)
        async with asyncio.timeout(30):
            await hold.reached.wait()
        kube.delete(VS, backup.volume_snapshot, namespace="app")
        await kube.wait_gone(VS, backup.volume_snapshot, "app", timeout=30)
        hold.release()
        done = await wait_ended(kube, backup)
        assert done["status"]["phase"] == "Failed", done["status"].get("message")
        assert backup.volume_snapshot in done["status"]["message"], done["status"]["message"]
        await backup_cleaned_up(w.sim, backup)


async def test_short_operation_timeout_still_completes_a_small_backup(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        volume = await sample_app(w.sim)
        backup = await start_backup(cluster.kube, operation_timeout="1s")
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        await backup_cleaned_up(w.sim, backup)
        assert tree_differences(volume, await stored_tree(cluster, done, tmp_path / "stored")) == []


async def test_restore_into_another_namespace(cluster: Cluster, tmp_path: Path) -> None:
    kube = cluster.kube
    async with world(cluster, tmp_path) as w:
        volume = await sample_app(w.sim)
        backup = await start_backup(kube)
        done = await wait_ended(kube, backup)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        await backup_cleaned_up(w.sim, backup)
        subprocess.run(["cp", "-a", str(volume), str(tmp_path / "expected")], check=True)
        volume = tmp_path / "expected"
        pv = kube.get("persistentvolumeclaims", "data", namespace="app")["spec"]["volumeName"]
        kube.delete("pods", "db-0", namespace="app")
        kube.delete("persistentvolumeclaims", "data", namespace="app")
        await kube.wait_gone("persistentvolumes", pv, None, timeout=30)
        restore = restore_of(kube, done, namespace="elsewhere", storage_class="immediate", size="64Mi")
        pod = start_workload(kube, restore)
        ended = await wait_done(cluster, restore)
        assert ended["status"]["phase"] == "Completed", ended["status"].get("message")
        restored = await handed_over(w, restore, pod)
        assert tree_differences(volume, restored) == []


async def test_backup_pod_unschedulable_fails_and_cleans_up(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path, unschedulable_grace_s=0.5) as w:
        await sample_app(w.sim)
        for node in ("node-a", "node-b", "node-c"):
            cluster.kube.patch("nodes", node, {"spec": {"unschedulable": True}})
        backup = await start_backup(cluster.kube)
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Failed"
        assert "cannot be scheduled" in done["status"]["message"], done["status"]["message"]
        await backup_cleaned_up(w.sim, backup)


async def test_a_backup_pod_on_a_node_without_an_agent_fails_saying_so(cluster: Cluster, tmp_path: Path) -> None:
    """The backup pod is not pinned (as Velero's is not): on a node where Ferry's DaemonSet does not run, the
    prepare timeout fails the backup naming that node, and everything is cleaned up."""
    async with world(cluster, tmp_path, agents=["node-a"], prepare_timeout_s=2.0) as w:
        await sample_app(w.sim, node="node-a")  # the scheduler then puts the backup pod on node-b (fewest pods)
        backup = await start_backup(cluster.kube)
        done = await wait_ended(cluster.kube, backup)
        assert done["status"]["phase"] == "Failed"
        assert "the Ferry agent on node node-b" in done["status"]["message"]
        assert "is Ferry's DaemonSet running on that node?" in done["status"]["message"]
        await backup_cleaned_up(w.sim, backup)
