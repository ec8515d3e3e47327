"""Velero's backup with ``--snapshot-move-data --data-mover ferry``, end to end, and the whole cycle: Velero's
objects replayed as its code creates them (tests/support/velero_backup.py), three agents on three nodes of
the simulated cluster (with its snapshot controller and CSI driver), the repository on the real S3 server.
A DataUpload must end Completed with a snapshot ID and exact progress, nothing of the backup left in any
namespace (no pod, PVC, PV, VolumeSnapshot, content or storage snapshot), and restoring that snapshot ID
through a Velero-style restore must give the application's data back byte for byte."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import REPOSITORY_PASSWORD, Cluster
from tests.support.data import make_sample_tree, mixed_bytes, tree_differences
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY
from tests.support.velero import handed_over, progress, start_workload, wait_done, world
from tests.support.velero_backup import (
    app_volume,
    backup_cleaned_up,
    dataupload,
    exact_copy,
    file_bytes,
    read_block,
    restore_of,
    start_app,
    start_backup,
    wait_ended,
    write_block,
)

MiB = 1024 * 1024


def _completed(du: dict[str, object]) -> dict[str, object]:
    status = du["status"]
    assert isinstance(status, dict)
    assert status["phase"] == "Completed", status.get("message")
    return status


async def _delete_app(cluster: Cluster, namespace: str = "app", pvc: str = "data", pod: str = "db-0") -> None:
    """What deleting the application does to its volume: pod and PVC gone, the PV deleted with them."""
    kube = cluster.kube
    claim = kube.get("persistentvolumeclaims", pvc, namespace=namespace)
    assert claim is not None
    pv = claim["spec"]["volumeName"]
    kube.delete("pods", pod, namespace=namespace)
    kube.delete("persistentvolumeclaims", pvc, namespace=namespace)
    await kube.wait_gone("pods", pod, namespace, timeout=30)
    await kube.wait_gone("persistentvolumeclaims", pvc, namespace, timeout=30)
    await kube.wait_gone("persistentvolumes", pv, None, timeout=30)


@pytest.mark.parametrize("binding", ["immediate", "wffc"])
async def test_filesystem_backup_as_velero_runs_it(cluster: Cluster, tmp_path: Path, binding: str) -> None:
    async with world(cluster, tmp_path) as w:
        start_app(cluster.kube, storage_class=binding)
        volume = await app_volume(w.sim)
        make_sample_tree(volume / "tree", big_file=3 * MiB)
        expected = file_bytes(volume)
        backup = await start_backup(cluster.kube)
        done = await wait_ended(cluster.kube, backup)
        status = _completed(done)
        assert status["snapshotID"]
        assert status["progress"] == {"totalBytes": expected, "bytesDone": expected}
        assert status["incrementalBytes"] > 0
        assert status["nodeOS"] == "linux"
        assert status["startTimestamp"] <= status["completionTimestamp"]
        view = progress(dataupload(cluster.kube, backup))
        assert view["completed"]
        assert "err" not in view
        assert view["nCompleted"] == view["nTotal"] == expected
        assert cluster.phases(backup.dataupload, "datauploads") == [
            "New",
            "Accepted",
            "Prepared",
            "InProgress",
            "Completed",
        ]
        await backup_cleaned_up(w.sim, backup)
    # The repository is the one `ferry` itself reads, with the password in Velero's Secret; the snapshot says
    # which backup and PVC it holds.
    password = tmp_path / "repository-password"
    password.write_bytes(REPOSITORY_PASSWORD)
    env = {
        **os.environ,
        "FERRY_PASSWORD_FILE": str(password),
        "AWS_ENDPOINT_URL_S3": cluster.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }
    repo = f"s3://{cluster.bucket}/backups/ferry/app"
    listed = subprocess.run(
        [sys.executable, "-m", "agent", "snapshot", "list", "--repo", repo],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert f"{status['snapshotID']}  filesystem" in listed.stdout
    assert "velero backup backup-1: PVC app/data" in listed.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "agent", "snapshot", "list", "--repo", repo, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    source = json.loads(as_json.stdout)[0]["source"]
    assert source["velero.io/backup-name"] == "backup-1"
    assert source["velero.io/backup-uid"] == backup.uid
    assert (source["namespace"], source["pvc"], source["volumeMode"]) == ("app", "data", "Filesystem")


async def test_the_whole_cycle_filesystem(cluster: Cluster, tmp_path: Path) -> None:
    """Back up, delete the application, restore; change some data, back up again (only the change is
    stored); each backup restores to its own data."""
    async with world(cluster, tmp_path) as w:
        kube = cluster.kube
        start_app(kube)
        volume = await app_volume(w.sim)
        make_sample_tree(volume / "tree", big_file=4 * MiB)
        first = exact_copy(volume, tmp_path / "first")
        backup1 = await start_backup(kube, backup_name="backup-1")
        du1 = await wait_ended(kube, backup1)
        status1 = _completed(du1)
        await backup_cleaned_up(w.sim, backup1)

        big = max((p for p in volume.rglob("*") if p.is_file() and not p.is_symlink()), key=lambda p: p.stat().st_size)
        with open(big, "r+b") as f:  # change one MiB in the middle of the largest file, add a file
            f.seek(big.stat().st_size // 2)
            f.write(random.Random(7).randbytes(MiB))
        (volume / "new.txt").write_text("written after the first backup\n")
        second = exact_copy(volume, tmp_path / "second")
        backup2 = await start_backup(kube, backup_name="backup-2")
        du2 = await wait_ended(kube, backup2)
        status2 = _completed(du2)
        await backup_cleaned_up(w.sim, backup2)
        assert status2["snapshotID"] != status1["snapshotID"]
        assert status2["incrementalBytes"] <= (2 * MiB + 64 * 1024), "the second backup stored more than the change"
        assert status2["progress"]["totalBytes"] > 8 * status2["incrementalBytes"]

        for du, expected in ((du1, first), (du2, second)):
            await _delete_app(cluster)
            restore = restore_of(kube, du, storage_class="immediate", size="64Mi")
            pod = start_workload(kube, restore)
            ended = await wait_done(cluster, restore)
            assert ended["status"]["phase"] == "Completed", ended["status"].get("message")
            restored = await handed_over(w, restore, pod)
            assert tree_differences(expected, restored) == []


@pytest.mark.root
async def test_the_whole_cycle_block(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        kube = cluster.kube
        size = 32 * MiB
        start_app(kube, block=True, size="32Mi", pvc="disk")
        device = await app_volume(w.sim, pvc="disk")
        data = mixed_bytes(random.Random(3), size, run=MiB)
        write_block(device, data)
        backup1 = await start_backup(kube, pvc="disk", backup_name="backup-1")
        du1 = await wait_ended(kube, backup1)
        status1 = _completed(du1)
        assert status1["progress"] == {"totalBytes": size, "bytesDone": size}
        await backup_cleaned_up(w.sim, backup1)

        change = os.urandom(MiB)
        write_block(device, change, 8 * MiB)
        changed = data[: 8 * MiB] + change + data[9 * MiB :]
        backup2 = await start_backup(kube, pvc="disk", backup_name="backup-2")
        du2 = await wait_ended(kube, backup2)
        status2 = _completed(du2)
        await backup_cleaned_up(w.sim, backup2)
        assert status2["incrementalBytes"] <= 4 * MiB + 64 * 1024  # one block chunk (4 MiB) rewritten

        for du, expected in ((du1, data), (du2, changed)):
            await _delete_app(cluster, pvc="disk")
            restore = restore_of(kube, du, storage_class="immediate", size="32Mi", volume_mode="Block")
            pod = start_workload(kube, restore, block=True)
            ended = await wait_done(cluster, restore)
            assert ended["status"]["phase"] == "Completed", ended["status"].get("message")
            restored = await handed_over(w, restore, pod)
            assert read_block(restored, size) == expected
