"""The agent's repositories are encrypted with Velero's repository password (Secret velero-repo-credentials):
the first backup of a namespace creates one (DataDownloads restoring from such repositories: every agent
restore test, whose snapshots are made with that password), Velero's well-known default password is
warned about, and a missing Secret fails the backup naming it (issue 12)."""

from __future__ import annotations

import base64
from pathlib import Path

from agent.backup.writer import create_snapshot
from agent.repo.config import CONFIG
from agent.repo.repository import Repository
from agent.settings import SnapshotSettings
from agent.storage.s3 import S3Storage
from tests.support.cluster import Cluster
from tests.support.data import tree_differences
from tests.support.velero import NS, world
from tests.support.velero_backup import cluster_s3, sample_app, start_backup, stored_tree, wait_ended


def _set_password(cluster: Cluster, password: bytes) -> None:
    secret = cluster.kube.get("secrets", "velero-repo-credentials", namespace=NS)
    assert secret is not None
    secret["data"] = {"repository-password": base64.b64encode(password).decode()}
    cluster.kube.update("secrets", secret)


async def test_backups_create_an_encrypted_repository_that_restores_open(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        source = await sample_app(w.sim)
        backup = await start_backup(cluster.kube)
        du = await wait_ended(cluster.kube, backup)
        assert du["status"]["phase"] == "Completed", du["status"]
        assert not [e for e in cluster.events_for(backup.dataupload) if e["reason"] == "DefaultRepositoryPassword"]
        stored = await stored_tree(cluster, du, tmp_path / "stored")
        assert tree_differences(source, stored) == []
    config = await _config(cluster)
    assert b'"encryption": "aes-256-gcm"' in config


async def _config(cluster: Cluster) -> bytes:
    settings = cluster_s3(cluster)
    async with await S3Storage.open(settings, cluster.bucket, "backups/ferry/app") as storage:
        return await storage.get(CONFIG)


async def test_velero_s_default_password_is_warned_about(cluster: Cluster, tmp_path: Path) -> None:
    _set_password(cluster, b"static-passw0rd")
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube)
        du = await wait_ended(cluster.kube, backup)
        assert du["status"]["phase"] == "Completed", du["status"]
        warned = [e for e in cluster.events_for(backup.dataupload) if e["reason"] == "DefaultRepositoryPassword"]
        assert len(warned) == 1
        assert warned[0]["type"] == "Warning"
        assert "well-known default" in warned[0]["message"]
        assert "static-passw0rd" not in warned[0]["message"], "the password itself is never written out"


async def test_a_missing_repository_secret_fails_the_backup_naming_it(cluster: Cluster, tmp_path: Path) -> None:
    cluster.kube.delete("secrets", "velero-repo-credentials", namespace=NS)
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube)
        du = await wait_ended(cluster.kube, backup)
        assert du["status"]["phase"] == "Failed"
        assert "velero-repo-credentials" in du["status"]["message"]
        assert "does not exist" in du["status"]["message"]


async def test_a_changed_password_is_refused_in_one_line(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        first = await start_backup(cluster.kube)
        assert (await wait_ended(cluster.kube, first))["status"]["phase"] == "Completed"
        _set_password(cluster, b"another password")
        second = await start_backup(cluster.kube, backup_name="backup-2")
        du = await wait_ended(cluster.kube, second)
        assert du["status"]["phase"] == "Failed"
        assert "wrong password" in du["status"]["message"]
        assert "\n" not in du["status"]["message"]


async def test_a_format_1_repository_is_not_written_to_until_upgraded(cluster: Cluster, tmp_path: Path) -> None:
    settings = cluster_s3(cluster)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "f").write_bytes(b"written by an earlier Ferry")
    async with await S3Storage.open(settings, cluster.bucket, "backups/ferry/app") as storage:
        await create_snapshot(Repository(storage), str(tmp_path / "old"), SnapshotSettings())
    async with world(cluster, tmp_path) as w:
        await sample_app(w.sim)
        backup = await start_backup(cluster.kube)
        du = await wait_ended(cluster.kube, backup)
        assert du["status"]["phase"] == "Failed"
        assert "format 1 Ferry repository" in du["status"]["message"]
        assert "ferry repo init --no-encryption" in du["status"]["message"]
