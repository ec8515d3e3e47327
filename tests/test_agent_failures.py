"""DataDownloads that cannot be restored fail with a message an operator can act on, before any byte is
written: storage locations missing, malformed or of another cloud, credentials missing, the snapshot
missing, tuning keys invalid. And the ones that can: credentials from the node's file, unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import Cluster, agent_settings, credentials_ini, running_agent
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY


async def restore_once(cluster: Cluster, name: str, snapshot_id: str, **dd: object) -> tuple[dict[str, str], Path]:
    [mount] = cluster.add_volume("app", f"{name}-claim", ["node-a"])
    settings = agent_settings(cluster, "node-a", **dd.pop("agent", {}))  # type: ignore[arg-type]
    async with running_agent(settings):
        cluster.create_dd(name, snapshot_id, f"{name}-claim", **dd)  # type: ignore[arg-type]
        done = await cluster.wait_phase(name, "Completed", "Failed", "Canceled")
    return done["status"], mount


@pytest.mark.parametrize(
    ("bsl", "message"),
    [
        (None, "BackupStorageLocation velero/nowhere does not exist; create it or fix spec.backupStorageLocation"),
        (
            {"provider": "velero.io/azure"},
            "BackupStorageLocation velero/nowhere uses Azure Blob Storage (velero.io/azure), which Ferry cannot read: "
            "Ferry serves S3-compatible storage only (provider aws)",
        ),
        ({"provider": "gcp"}, "uses Google Cloud Storage (gcp), which Ferry cannot read"),
        ({"config": {"s3ForcePathStyle": "maybe"}}, "config.s3ForcePathStyle: 'maybe' is not a boolean"),
        ({"config": {"s3Url": "minio:9000"}}, "config.s3Url 'minio:9000' must be an http:// or https:// URL"),
        (
            {"credential": {"name": "absent", "key": "cloud"}},
            "Secret velero/absent key 'cloud' (spec.credential of BackupStorageLocation velero/nowhere) does not exist",
        ),
        (
            {"credential": {"name": "ferry-credentials", "key": "wrong-key"}},
            "the Secret has no key 'wrong-key'",
        ),
        ({"config": {"profile": "backup"}, "node_file": True}, "has no [backup] profile"),
    ],
    ids=[
        "missing",
        "azure",
        "gcp",
        "bad-bool",
        "bad-url",
        "secret-missing",
        "secret-key-missing",
        "profile-missing",
    ],
)
async def test_storage_location_problems_fail_before_any_write(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], bsl: dict[str, object] | None, message: str
) -> None:
    snapshot_id, _ = tiny_snapshot
    agent: dict[str, str] = {}
    if bsl is not None:
        options = dict(bsl)
        if options.pop("node_file", False):
            path = cluster.kubelet_root.parent / "node-credentials"
            path.write_text(credentials_ini())
            agent["credentials_file"] = str(path)
        cluster.add_bsl("nowhere", **options)  # type: ignore[arg-type]
    status, mount = await restore_once(cluster, "broken", snapshot_id, bsl="nowhere", agent=agent)
    assert status["phase"] == "Failed"
    assert message in status["message"]
    assert list(mount.iterdir()) == [], "a byte was written"
    assert cluster.phases("broken") == ["New", "Accepted", "Prepared", "Failed"]
    assert cluster.events_for("broken")[-1]["type"] == "Warning"


async def test_no_secret_and_no_file_asks_the_sdk_chain_and_says_what_was_tried(
    cluster: Cluster, tiny_snapshot: tuple[str, Path]
) -> None:
    """Neither spec.credential nor the node's file: the AWS SDK's default chain is asked (IRSA, Pod Identity,
    instance metadata on a real cluster); when it finds nothing the message names every source."""
    snapshot_id, _ = tiny_snapshot
    cluster.add_bsl("nowhere")
    status, mount = await restore_once(cluster, "no-keys", snapshot_id, bsl="nowhere")
    assert status["phase"] == "Failed"
    assert "BackupStorageLocation velero/nowhere has no spec.credential" in status["message"]
    assert (
        "default chain (environment, IRSA web identity, EKS Pod Identity, instance metadata) found none"
        in (status["message"])
    )
    assert list(mount.iterdir()) == [], "a byte was written"


async def test_sdk_chain_credentials_are_used(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain's first source, the environment, stands for what IRSA or Pod Identity provide in a pod."""
    snapshot_id, source = tiny_snapshot
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    cluster.add_bsl("ambient")
    status, mount = await restore_once(cluster, "ambient", snapshot_id, bsl="ambient")
    assert status["phase"] == "Completed", status.get("message")
    assert (mount / "note.txt").read_bytes() == (source / "note.txt").read_bytes()


async def test_credentials_from_the_node_file(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    snapshot_id, source = tiny_snapshot
    path = cluster.kubelet_root.parent / "cloud"
    path.write_text(credentials_ini())
    cluster.add_bsl("node-creds")
    status, mount = await restore_once(
        cluster, "filecreds", snapshot_id, bsl="node-creds", agent={"credentials_file": str(path)}
    )
    assert status["phase"] == "Completed", status.get("message")
    assert (mount / "note.txt").read_bytes() == (source / "note.txt").read_bytes()


async def test_wrong_keys_fail_with_access_denied(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    snapshot_id, _ = tiny_snapshot
    cluster.add_credentials_secret("bad-keys", text=credentials_ini(secret="not-the-secret"))
    cluster.add_bsl("bad", credential={"name": "bad-keys", "key": "cloud"})
    status, mount = await restore_once(cluster, "denied", snapshot_id, bsl="bad")
    assert status["phase"] == "Failed"
    assert "was refused" in status["message"]
    assert "not-the-secret" not in status["message"]
    assert list(mount.iterdir()) == []


async def test_missing_snapshot(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    status, mount = await restore_once(cluster, "nosnap", "0" * 64)
    assert status["phase"] == "Failed"
    assert f"snapshot {'0' * 64} does not exist in s3://{cluster.bucket}/backups/ferry/app/" in status["message"]
    assert list(mount.iterdir()) == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"ferry.readsInFlight": "lots"}, "spec.dataMoverConfig.ferry.readsInFlight: 'lots' is not a whole number"),
        ({"WriteSparseFiles": "sometimes"}, "spec.dataMoverConfig.WriteSparseFiles: 'sometimes' is not a boolean"),
        ({"ParallelFilesDownload": "0"}, "spec.dataMoverConfig.ParallelFilesDownload: '0' must be at least 1"),
        ({"ferry.memory": "1MiB"}, "must hold at least one range"),
    ],
    ids=["reads", "sparse", "parallel", "memory"],
)
async def test_invalid_tuning_fails_before_any_write(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], config: dict[str, str], message: str
) -> None:
    snapshot_id, _ = tiny_snapshot
    status, mount = await restore_once(cluster, "badconfig", snapshot_id, config=config)
    assert status["phase"] == "Failed"
    assert message in status["message"]
    assert list(mount.iterdir()) == []
    assert "InProgress" not in cluster.phases("badconfig")


async def test_unknown_tuning_keys_are_reported_and_ignored(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    snapshot_id, source = tiny_snapshot
    config = {"WriteSparseFiles": "true", "ParallelFilesDownload": "2", "ferry.readsInFlight": "4", "Colour": "blue"}
    status, mount = await restore_once(cluster, "tuned", snapshot_id, config=config)
    assert status["phase"] == "Completed", status.get("message")
    assert (mount / "note.txt").read_bytes() == (source / "note.txt").read_bytes()
    [unknown] = [e for e in cluster.events_for("tuned") if e["reason"] == "UnknownConfig"]
    assert unknown["type"] == "Warning"
    assert "Colour" in unknown["message"]
    assert "WriteSparseFiles" not in unknown["message"].split("(")[0]


async def test_invalid_operation_timeout(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    snapshot_id, _ = tiny_snapshot
    status, _ = await restore_once(cluster, "badtimeout", snapshot_id, timeout="soon")
    assert status["phase"] == "Failed"
    assert "spec.operationTimeout: 'soon' is not a duration" in status["message"]


async def test_volume_plugin_without_a_known_layout_fails(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    snapshot_id, _ = tiny_snapshot
    cluster.add_volume("app", "nfs-claim", ["node-a"], plugin="nfs")
    async with running_agent(agent_settings(cluster, "node-a")):
        cluster.create_dd("on-nfs", snapshot_id, "nfs-claim")
        done = await cluster.wait_phase("on-nfs", "Completed", "Failed", "Canceled")
    assert done["status"]["phase"] == "Failed"
    assert "uses a volume plugin whose place on the node Ferry does not know" in done["status"]["message"]
    assert cluster.phases("on-nfs") == ["New", "Failed"]
