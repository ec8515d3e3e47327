"""Repository maintenance in the agents (issue 12): one agent leads (Lease ferry-maintenance); a Velero backup
deleted from the cluster has its snapshot forgotten and its unique data pruned, while a backup still being
written and one synced from another cluster (only its velero-backup.json in the location) are kept, and every
kept backup still restores byte for byte."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.controller.jobs import Inventory, Maintained, Maintainer, VeleroSnapshot
from agent.controller.maintenance import Maintenance
from agent.errors import NoRepository, SnapshotNotFound
from agent.kube.api import Kube
from agent.kube.events import EventRecorder
from agent.metrics import Metrics
from agent.storage.s3 import S3Storage
from agent.velero.locations import LocationResolver, StorageLocation
from agent.velero.objects import SNAPSHOT_FINALIZER
from tests.support.cluster import Cluster
from tests.support.data import tree_differences
from tests.support.kube.clients import backup as backup_object
from tests.support.velero import NS, world
from tests.support.velero_backup import (
    cluster_s3,
    exact_copy,
    sample_app,
    start_backup,
    stored_tree,
    wait_ended,
)

BSL_PREFIX = "backups"


def _passes(metrics: Metrics) -> float:
    return float(metrics.maintenance_passes._value.get())


def _reasons(cluster: Cluster, reason: str) -> list[dict[str, object]]:
    return [e for e in cluster.kube.list("events", namespace=NS) if e.get("reason") == reason]


async def _completed(cluster: Cluster, name: str, uid: str) -> dict[str, object]:
    made = await start_backup(cluster.kube, backup_name=name, backup_uid=uid)
    du = await wait_ended(cluster.kube, made)
    assert du["status"]["phase"] == "Completed", du["status"]
    return du


async def _stored_bytes(cluster: Cluster) -> int:
    async with await S3Storage.open(cluster_s3(cluster), cluster.bucket, f"{BSL_PREFIX}/ferry/app") as storage:
        return sum(max(0, s) for s in (await storage.sizes("packs/")).values())


async def test_a_deleted_backup_is_forgotten_and_pruned_by_the_one_leading_agent(
    cluster: Cluster, tmp_path: Path
) -> None:
    agents = ["node-a", "node-b"]
    async with world(cluster, tmp_path, agents=agents, maintenance_interval_s=1.0, maintenance_grace_s=0.0) as w:
        volume = await sample_app(w.sim)
        # backup-1: an ordinary backup; its Backup object exists from before its DataUpload, as Velero's does.
        kept = cluster.kube.create("backups", backup_object("backup-1"), namespace=NS)
        du1 = await _completed(cluster, "backup-1", kept["metadata"]["uid"])
        copy1 = exact_copy(volume, tmp_path / "copy1")
        # backup-3: synced from another cluster: only its velero-backup.json is in the location.
        synced_uid = str(uuid.uuid4())
        async with await S3Storage.open(cluster_s3(cluster), cluster.bucket, BSL_PREFIX) as top:
            record = {"kind": "Backup", "metadata": {"name": "backup-3", "uid": synced_uid}}
            await top.put("backups/backup-3/velero-backup.json", json.dumps(record).encode())
        du3 = await _completed(cluster, "backup-3", synced_uid)
        # backup-2: holds data no other backup has, then is deleted.
        (volume / "unique.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        doomed = cluster.kube.create("backups", backup_object("backup-2"), namespace=NS)
        du2 = await _completed(cluster, "backup-2", doomed["metadata"]["uid"])
        before = await _stored_bytes(cluster)
        assert not _reasons(cluster, "SnapshotsForgotten"), "a backup that exists was forgotten"

        cluster.kube.delete("backups", "backup-2", namespace=NS)
        await cluster.kube.wait_until(
            lambda: bool(_reasons(cluster, "RepositoryPruned")), 60, lambda: "no RepositoryPruned event"
        )
        forgotten = _reasons(cluster, "SnapshotsForgotten")
        assert len(forgotten) == 1
        assert "backup-2" in str(forgotten[0]["message"])
        assert forgotten[0]["involvedObject"]["kind"] == "BackupStorageLocation"  # type: ignore[index]
        assert before - await _stored_bytes(cluster) >= 3 * 1024 * 1024, "backup-2's unique data was not pruned"

        leaders = [node for node in agents if _passes(w.agents[node].metrics) > 0]
        assert len(leaders) == 1, "maintenance ran in more than one agent, or in none"
        lease = cluster.kube.get("leases", "ferry-maintenance", namespace=NS)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == leaders[0]
        leader_metrics = w.agents[leaders[0]].metrics
        assert leader_metrics.snapshots_forgotten._value.get() == 1
        assert leader_metrics.pruned_bytes._value.get() >= 3 * 1024 * 1024
        assert not _reasons(cluster, "RepositoryDamaged")
        assert not _reasons(cluster, "MaintenanceFailed")

    # Outside the cluster: backup-2's snapshot is gone, the others restore byte for byte.
    with pytest.raises(SnapshotNotFound):
        await stored_tree(cluster, du2, tmp_path / "gone")
    assert tree_differences(copy1, await stored_tree(cluster, du1, tmp_path / "one")) == []
    assert tree_differences(copy1, await stored_tree(cluster, du3, tmp_path / "three")) == []


class _Repositories:
    """The repository side of maintenance, as a record of what a pass asked of it (the decisions are what
    this tests; the real data path is tested above)."""

    def __init__(self, snapshots: list[VeleroSnapshot], in_location: dict[str, str]) -> None:
        self.listed = snapshots
        self.in_location = in_location
        self.forgotten: list[str] = []

    async def inventory(self, location: StorageLocation) -> Inventory:
        left = tuple(s for s in self.listed if s.snapshot_id not in self.forgotten)
        return Inventory(("app",), left)

    async def backup_in_location(self, location: StorageLocation, name: str) -> str | None:
        return self.in_location.get(name)

    async def forget(self, location: StorageLocation, namespace: str, snapshot_ids: list[str]) -> None:
        self.forgotten.extend(snapshot_ids)

    async def forget_and_prune(
        self, location: StorageLocation, namespace: str, snapshot_ids: list[str], grace_s: float, *, prune: bool
    ) -> Maintained:
        self.forgotten.extend(snapshot_ids)
        return Maintained(len(snapshot_ids), 0, 0, ())


@asynccontextmanager
async def _maintenance(cluster: Cluster, repos: Maintainer, **settings: Any) -> AsyncIterator[Maintenance]:
    """A Maintenance on the cluster (the agent's credentials) over ``repos``, as the leading agent runs it."""
    kube = await Kube.connect(str(cluster.kubeconfig), NS)
    try:
        with tempfile.TemporaryDirectory() as state:
            yield Maintenance(
                kube,
                repos,
                Metrics(),
                EventRecorder(kube, "node-a"),
                LocationResolver(kube, "/nonexistent", state),
                interval_s=3600,
                **settings,
            )
    finally:
        await kube.aclose()


async def test_which_snapshots_a_pass_forgets_and_when(cluster: Cluster, tmp_path: Path) -> None:
    """Kept: a Backup of that name and UID; one synced (another UID here, the location's record has the
    snapshot's). Forgotten once missing for the grace period: a Backup being deleted, a name reused by a newer
    Backup (another UID, no record), a backup gone from both. A snapshot made within the grace period waits."""
    made = {n: cluster.kube.create("backups", backup_object(n), namespace=NS)["metadata"]["uid"] for n in "abcd"}
    cluster.kube.patch("backups", "c", {"status": {"phase": "Deleting"}}, namespace=NS)
    old = time.time() - 7200
    snaps = [
        VeleroSnapshot("app", "1" * 64, "a", made["a"], old),  # its Backup: kept
        VeleroSnapshot("app", "2" * 64, "b", "uid-in-other-cluster", old),  # synced: kept
        VeleroSnapshot("app", "3" * 64, "c", made["c"], old),  # being deleted
        VeleroSnapshot("app", "4" * 64, "d", "an-older-backup-d", old),  # name reused, no record
        VeleroSnapshot("app", "5" * 64, "e", "gone", old),  # gone everywhere
        VeleroSnapshot("app", "6" * 64, "f", "gone-too", time.time()),  # gone, but made just now
    ]
    repos = _Repositories(snaps, {"b": "uid-in-other-cluster", "d": "another-uid"})
    now = [1000.0]
    async with _maintenance(cluster, repos, grace_s=600, clock=lambda: now[0]) as maintenance:
        first = await maintenance.pass_once()
        assert first.missing == 4
        assert not repos.forgotten, "forgotten before the grace period"
        now[0] += 599
        await maintenance.pass_once()
        assert not repos.forgotten
        now[0] += 1
        second = await maintenance.pass_once()
    assert sorted(repos.forgotten) == ["3" * 64, "4" * 64, "5" * 64]
    assert second.forgotten == 3
    events = _reasons(cluster, "SnapshotsForgotten")
    assert len(events) == 1
    assert "(c, d, e)" in str(events[0]["message"])


async def test_deleting_the_dataupload_of_a_backup_being_deleted_forgets_its_snapshot_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Velero deletes a backup's DataUploads while the Backup is Deleting: the finalizer Ferry put on them as
    they completed holds each until its snapshot is forgotten. A DataUpload deleted by hand while its backup
    stays keeps its snapshot; one whose Backup is gone (and has no velero-backup.json) loses it."""
    # No pass forgets anything here: the grace period is an hour.
    async with world(cluster, tmp_path, maintenance_interval_s=3600.0, maintenance_grace_s=3600.0) as w:
        volume = await sample_app(w.sim)
        uids = {n: cluster.kube.create("backups", backup_object(n), namespace=NS)["metadata"]["uid"] for n in "xyz"}
        made = {}
        for name in "xyz":
            made[name] = await start_backup(cluster.kube, backup_name=name, backup_uid=uids[name])
            du = await wait_ended(cluster.kube, made[name])
            assert du["status"]["phase"] == "Completed", du["status"]
            assert SNAPSHOT_FINALIZER in du["metadata"]["finalizers"]
        copy = exact_copy(volume, tmp_path / "copy")
        dus = {n: cluster.kube.get("datauploads", made[n].dataupload, namespace=NS) for n in "xyz"}

        cluster.kube.patch("backups", "x", {"status": {"phase": "Deleting"}}, namespace=NS)
        cluster.kube.delete("backups", "z", namespace=NS)
        for name in "xyz":
            cluster.kube.delete("datauploads", made[name].dataupload, namespace=NS)
            await cluster.kube.wait_gone("datauploads", made[name].dataupload, NS, timeout=30)
        forgotten = _reasons(cluster, "SnapshotForgotten")
        assert sorted(e["involvedObject"]["name"] for e in forgotten) == sorted(  # type: ignore[index]
            [made["x"].dataupload, made["z"].dataupload]
        )
        assert sum(a.metrics.snapshots_forgotten._value.get() for a in w.agents.values()) == 2
    for name in "xz":
        with pytest.raises(SnapshotNotFound):
            await stored_tree(cluster, dus[name], tmp_path / f"gone-{name}")  # type: ignore[arg-type]
    assert tree_differences(copy, await stored_tree(cluster, dus["y"], tmp_path / "y")) == []  # type: ignore[arg-type]


class _OneFails(_Repositories):
    """Repository "a-old" cannot be written (a format 1 one, say); "b" can. Records the locations visited."""

    def __init__(self, snapshots: list[VeleroSnapshot]) -> None:
        super().__init__(snapshots, {})
        self.visited: list[str] = []

    async def inventory(self, location: StorageLocation) -> Inventory:
        self.visited.append(location.name)
        return Inventory(("a-old", "b", "c"), tuple(self.listed), ("the repository of namespace c: wrong password",))

    async def forget_and_prune(
        self, location: StorageLocation, namespace: str, snapshot_ids: list[str], grace_s: float, *, prune: bool
    ) -> Maintained:
        if namespace == "a-old":
            raise NoRepository("it holds a format 1 Ferry repository, read-only until upgraded")
        return await super().forget_and_prune(location, namespace, snapshot_ids, grace_s, prune=prune)


async def test_a_failing_repository_holds_back_no_other_and_read_only_locations_are_left_alone(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Found by a break-test: one repository that could not be written stopped the whole location's
    maintenance, pass after pass."""
    cluster.add_bsl("archive", credential={"name": "ferry-credentials", "key": "cloud"})
    cluster.kube.patch("backupstoragelocations", "archive", {"spec": {"accessMode": "ReadOnly"}}, namespace=NS)
    old = time.time() - 7200
    repos = _OneFails(
        [VeleroSnapshot("a-old", "1" * 64, "gone-a", "u", old), VeleroSnapshot("b", "2" * 64, "gone-b", "u", old)]
    )
    async with _maintenance(cluster, repos, grace_s=0) as maintenance:
        report = await maintenance.pass_once()
    assert repos.forgotten == ["2" * 64]
    assert repos.visited == ["default"], "a ReadOnly location was maintained"
    assert len(report.errors) == 2
    failed = [str(e["message"]) for e in _reasons(cluster, "MaintenanceFailed")]
    assert any("namespace a-old" in m and "format 1" in m for m in failed), failed
    assert any("namespace c: wrong password" in m for m in failed), failed
